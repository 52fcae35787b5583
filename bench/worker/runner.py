"""One measurement path for every variant: train, evaluate, time inference, record everything.

A variant (bench.variants.Variant) only changes data here: which network, precision, compiler
mode, memory format, batch size and loader. The loop itself is the same for all of them.
measure() runs the phases (train_once per repeat, with the energy window, then inference, robustness
and the reference loop) and then summarises them into one result row.
"""

import itertools
import math
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bench import distributed
from bench.config import RunConfig, RunContext
from bench.instruments import memory, mfu
from bench.instruments.timing import Clock, StepTimes, percentiles, rate, time_calls
from bench.worker.reference_loop import efficiency, reference_samples_per_s
from bench.worker.trainer import Trainer
from bench.variants import Variant
from kernels.select import use_kernel
from loaders import make_loader
from loaders.split import check_class_prior, class_share
from models import build_model, count_parameters, count_stored_parameters

__all__ = ["Phases", "Trainer", "TrainingRun", "VariantResult", "failed_row", "measure", "reference_key"]

Window = tuple[float, float]  # perf_counter seconds


@dataclass
class VariantResult:
    row: dict
    curves: list[dict]
    inference: list[dict]
    robustness: list[dict] = field(default_factory=list)  # a row per bench.worker.robustness condition
    steps: list[dict] = field(default_factory=list)  # a row per timed step (steps.csv), for verdicts on short runs
    phases: "Phases | None" = None  # where the parent cuts its NVML timeline for this variant
    reference: list[float] = field(default_factory=list)  # the plain loop's samples/s per round, for reuse


@dataclass
class Phases:
    """The perf_counter windows of the last training run and the variant's phase marks: the
    parent's NVML sampler owns the timeline, so the worker hands back where to cut it
    (perf_counter is CLOCK_MONOTONIC on Linux, one clock for every process)."""
    t_start: float
    t_end: float
    steps: int  # training steps of the run, warm-up included
    batch_size: int
    time_to_target: float
    warmup_window: Window | None
    steady_windows: list[Window]
    eval_windows: list[Window]
    marks: list[tuple[float, str]]  # (perf_counter, "variant:phase") for nvml.csv's marker column
    energy_window: Window | None = None  # the last epochs back to back (TrainingRun.energy_window), for the headline energy
    energy_steps: int = 0  # training steps in energy_window (each rank's)


@dataclass
class TrainingRun:
    """One fresh model trained for the run's epochs: per-step times, curves and the perf_counter
    windows of its phases (for the NVML energy of each)."""
    trainer: Trainer
    val_loader: object
    t_start: float
    train_loader: object = None
    t_end: float = math.nan
    curves: list[dict] = field(default_factory=list)
    data_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    compute_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    epoch_sps: list[float] = field(default_factory=list)  # steady samples/s of each epoch
    epoch_steps: list[int] = field(default_factory=list)  # steps of each epoch, in order
    steps: int = 0
    timed_frames: int = 0  # Dynamo frames compiled during the timed steps: recompilations
    time_to_target: float = math.nan
    warmup_window: Window | None = None  # the warm-up steps, where a compiled model compiles
    steady_windows: list[Window] = field(default_factory=list)  # the timed steps of each epoch
    eval_windows: list[Window] = field(default_factory=list)
    energy_window: Window | None = None  # the last epochs back to back (and any steps after them)
    energy_steps: int = 0  # training steps in energy_window (each rank's)

    @property
    def samples(self) -> int:
        return len(self.data_ms) * self.trainer.variant.batch_size


def _dynamo_counts() -> dict:
    counters = torch._dynamo.utils.counters
    return {"frames": counters["frames"]["total"], "graphs": counters["stats"]["unique_graphs"],
            "graph_breaks": sum(counters["graph_break"].values())}


def _loader(variant: Variant, cfg: RunConfig, ctx: RunContext, ids: list[str], train: bool):
    options = {}
    if variant.loader == "resident":
        from loaders.dataset import decode_split
        from loaders.resident import load_decoded
        key = ("resident", "train" if train else "val")
        if key not in ctx.loader_cache:
            ctx.loader_cache[key] = load_decoded(Path(ctx.decoded_dir) / key[1]) if ctx.decoded_dir else \
                decode_split(cfg.data_root, ids, progress=cfg.progress)
        options["tensors"] = ctx.loader_cache[key]
    if _loader_kernels(variant, cfg):
        options["input_prep_kernel"] = True
    loader = make_loader(variant.loader, cfg.data_root, ids, batch_size=variant.batch_size, shuffle=train,
                         drop_last=True, seed=cfg.seed, device=cfg.device, workers=cfg.workers,
                         rank=cfg.rank, world=cfg.world_size, **options)
    if len(loader) == 0:
        split = "train" if train else "val"
        raise ValueError(f"the {split} split has {len(ids)} samples, fewer than --batch-size {variant.batch_size}"
                         + (f" on each of {cfg.world_size} ranks" if cfg.world_size > 1 else ""))
    return loader


def _loader_kernels(variant: Variant, cfg: RunConfig) -> list[str]:
    """The Triton kernels the variant's loader uses: input preparation, only in the DALI loader
    (its batches arrive raw on the device; the other loaders prepare on the host or once), which
    prepares fp32 contiguous batches whatever the variant trains in."""
    if variant.loader != "dali":
        return []
    used = use_kernel("input_prep", cfg.device, cfg.kernels, dtype="fp32", layout="contiguous")
    return ["input_prep"] if used else []


def _global_rate(ms: np.ndarray, batch_size: int, cfg: RunConfig) -> float:
    """samples/s of the timed steps: under torchrun all ranks' samples over the slowest rank's time."""
    if cfg.world_size == 1:
        return rate(ms, batch_size)
    return distributed.global_samples_per_s(len(ms) * batch_size, float(ms.sum()) / 1000, cfg.device)


def _train_epoch(run: TrainingRun, loader, times: StepTimes, cfg: RunConfig, desc: str,
                 max_steps: int) -> tuple[torch.Tensor, float | None]:
    """One epoch of at most `max_steps` timed steps (the same on every rank); returns each step's
    loss (kept on the device: no copy or sync per step) and the start of this epoch's steady
    window, its first step past the warm-up."""
    trainer, clock = run.trainer, times.clock
    losses = torch.zeros(max_steps, device=cfg.device)
    steps = 0
    batches = iter(tqdm(loader, desc=desc, unit="step", disable=not cfg.progress, leave=False))
    frames_before = steady_start = None
    while True:
        if steady_start is None and run.steps >= cfg.warmup_steps:  # timed steps start here
            steady_start = time.perf_counter()
            frames_before = _dynamo_counts()["frames"]
            if run.warmup_window is None:
                run.warmup_window = (run.t_start, steady_start)
        if steps == max_steps:
            break
        start = clock.mark()
        try:
            rgb, lidar, label = next(batches)
        except StopIteration:
            break
        ready = clock.mark()
        if run.steps == 0:
            check_class_prior(label.tolist(), class_share(cfg.train_ids))
        losses[steps] = trainer.step(rgb, lidar, label)
        times.add(start, ready, clock.mark())
        steps, run.steps = steps + 1, run.steps + 1
    if frames_before is not None:
        run.timed_frames += _dynamo_counts()["frames"] - frames_before
    return losses[:steps], steady_start


def train_once(variant: Variant, cfg: RunConfig, ctx: RunContext, repeat: int) -> TrainingRun:
    """Trains one fresh model for cfg.epochs, evaluating after each epoch as the seed did.

    Where an energy window is asked for (cfg.energy_window_s), the last epochs, as few as fill it,
    train back to back in one window and are evaluated after it, each from a copy of the weights
    its epoch ended with: evaluation changes no weight, so the curves are those of the seed's loop,
    and the headline energy is that of the job's own training steps. Steps after the last epoch
    (at the schedule's final lr, 0) fill a window the epochs cannot."""
    trainer = Trainer(variant, cfg)
    train_loader, val_loader = _loader(variant, cfg, ctx, cfg.train_ids, True), _loader(variant, cfg, ctx, cfg.val_ids, False)
    times = StepTimes(Clock(cfg.device))
    run = TrainingRun(trainer, val_loader, t_start=time.perf_counter(), train_loader=train_loader)
    data_ms, compute_ms = [], []
    deferred = []  # (curve row, when its epoch's training ended, the weights it ended with)
    window_start = window_next = None
    max_steps = distributed.min_over_ranks(len(train_loader), cfg.device) if cfg.world_size > 1 else len(train_loader)
    epochs = tqdm(range(cfg.epochs), desc=variant.name, unit="epoch", disable=not cfg.progress, leave=False)
    for epoch in epochs:
        t_epoch = time.perf_counter()
        if window_next and window_start is None:
            window_start = t_epoch
        losses, steady_start = _train_epoch(run, train_loader, times, cfg, f"epoch {epoch}", max_steps)
        epoch_data, epoch_compute = times.collect()  # synchronises: the epoch's work is done
        _check_finite(losses, epoch)
        steps = len(losses)
        t_trained = time.perf_counter()
        if steady_start is not None:
            run.steady_windows.append((steady_start, t_trained))
        skip = max(cfg.warmup_steps - sum(len(d) for d in data_ms), 0)
        data_ms.append(epoch_data)
        compute_ms.append(epoch_compute)
        epoch_sps = _global_rate((epoch_data + epoch_compute)[skip:], variant.batch_size, cfg)
        if not math.isnan(epoch_sps):
            run.epoch_sps.append(epoch_sps)
        lr = float(trainer.optimizer.param_groups[0]["lr"])  # a tensor on the device under --compile-mode step
        trainer.scheduler.step()
        train_loss = distributed.reduce_sums({"sum": losses.sum(), "steps": steps}, cfg.device) \
            if cfg.world_size > 1 else {"sum": losses.sum().item(), "steps": steps}
        curve = {"variant": variant.name, "seed": cfg.seed, "repeat": repeat, "epoch": epoch,
                 "train_loss": train_loss["sum"] / max(train_loss["steps"], 1), "lr": lr,
                 "epoch_s": t_trained - t_epoch, "train_samples_per_s": epoch_sps}
        run.curves.append(curve)
        if window_start is not None:
            run.energy_steps += steps
            deferred.append((curve, t_trained, _weights(trainer.model)))
        else:
            _evaluate(run, curve, cfg)
            window_next = _window_starts_next(cfg, epoch, t_trained - t_epoch)
        epochs.set_postfix(acc=f"{curve.get('accuracy', math.nan):.1f}", loss=f"{curve.get('val_loss', math.nan):.4f}")
    run.data_ms, run.compute_ms = np.concatenate(data_ms), np.concatenate(compute_ms)
    run.epoch_steps = [len(d) for d in data_ms]
    close_energy_window(run, cfg, window_start)
    for curve, t_trained, weights in deferred:
        trainer.model.load_state_dict(weights)  # in place; the last epoch's leaves the trained weights
        _evaluate(run, curve, cfg, trained_at=t_trained)
    run.t_end = time.perf_counter()
    return run


def _evaluate(run: TrainingRun, curve: dict, cfg: RunConfig, trained_at: float | None = None) -> None:
    """The epoch's validation pass into its curve row. elapsed_s runs to the end of the pass, or,
    for an epoch evaluated after the energy window, to the end of its training (`trained_at`);
    the time to target is the elapsed_s of the first epoch that reaches it."""
    t_eval = time.perf_counter()
    val_loss, accuracy = run.trainer.evaluate(run.val_loader)  # .item() inside synchronises
    if not math.isfinite(val_loss):
        raise FloatingPointError(f"validation loss is not finite at epoch {curve['epoch']}")
    t_done = time.perf_counter()
    run.eval_windows.append((t_eval, t_done))
    elapsed = (trained_at or t_done) - run.t_start
    curve.update(val_loss=val_loss, accuracy=accuracy, eval_s=t_done - t_eval, elapsed_s=elapsed)
    if math.isnan(run.time_to_target) and accuracy >= cfg.target_acc:
        run.time_to_target = elapsed


def _window_starts_next(cfg: RunConfig, epoch: int, epoch_s: float) -> bool:
    """Whether the energy window starts with the next epoch: the latest start from which the
    remaining epochs, at this one's length, still fill cfg.energy_window_s (the one after it no
    longer would). Rank 0 decides for every rank: under a torchrun the user started, rank 0 alone
    measured the counter, so only its cfg asks for a window."""
    if epoch >= cfg.epochs - 1:
        return False
    starts = cfg.energy_window_s > 0 and (cfg.epochs - epoch - 2) * epoch_s < cfg.energy_window_s
    return bool(distributed.broadcast_from_rank0(starts))


def close_energy_window(run: TrainingRun, cfg: RunConfig, window_start: float | None) -> None:
    """After the last epoch: the energy window (from `window_start`, the first epoch in it, or
    from now after a single epoch) filled to cfg.energy_window_s with steps after the last epoch
    where the epochs fell short, into run.energy_window and run.energy_steps. Every rank steps
    when rank 0 asks for a window, as many steps as rank 0 plans."""
    if window_start is None and not distributed.broadcast_from_rank0(cfg.energy_window_s > 0):
        return
    now = time.perf_counter()
    top_up, top_up_steps = train_energy_window(run, cfg, cfg.energy_window_s - (now - (window_start or now)))
    if window_start is None:  # one epoch: the window is the steps after it
        run.energy_window, run.energy_steps = top_up, top_up_steps
    else:
        run.energy_window, run.energy_steps = (window_start, top_up[1] if top_up else now), run.energy_steps + top_up_steps


def _weights(model: torch.nn.Module) -> dict:
    """A copy of the model's parameters and buffers on the host (none of the device's memory)."""
    return {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()}


def train_energy_window(run: TrainingRun, cfg: RunConfig, budget_s: float | None = None) -> tuple[Window | None, int]:
    """More steady steps of the run's trainer and loader in one contiguous window of at least
    `budget_s` (default cfg.energy_window_s), for an energy figure the counter resolves
    (nvml.MIN_COUNTER_PERIODS periods) where the epochs back to back fall short of it (one epoch,
    or epochs shorter than the window), continuing them. Rank 0's clock plans the steps (every
    rank takes the same number, as DDP needs), first at the epochs' median step time, then at the
    window's own rate until it is long enough. The steps are not timed one by one: the throughput
    figures stay the epochs'. They train at the schedule's lr after the last epoch, 0 at the end
    of the cosine schedule: the same work a step, the trained weights kept. Returns (window,
    steps), or (None, 0) when no time is left to fill."""
    clock = Clock(cfg.device)
    budget_s = cfg.energy_window_s if budget_s is None else budget_s
    step_ms = run.data_ms[cfg.warmup_steps:] + run.compute_ms[cfg.warmup_steps:]
    if not len(step_ms):  # no step past the warm-up: the warm-up's slower steps plan fewer
        step_ms = run.data_ms + run.compute_ms
    planned = distributed.broadcast_from_rank0(_steps_for(budget_s, float(np.median(step_ms)) / 1000))
    if planned == 0:
        return None, 0
    batches = itertools.chain.from_iterable(itertools.repeat(run.train_loader))  # epoch after epoch
    clock.sync()
    t0, steps = time.perf_counter(), 0
    while planned > 0:
        for rgb, lidar, label in itertools.islice(batches, planned):
            run.trainer.step(rgb, lidar, label)
        steps += planned
        clock.sync()
        elapsed = time.perf_counter() - t0
        planned = distributed.broadcast_from_rank0(_steps_for(budget_s - elapsed, elapsed / steps))
    return (t0, time.perf_counter()), steps


def _steps_for(seconds: float, step_s: float) -> int:
    """Steps that fill `seconds` at `step_s` a step (at least one while any time is left)."""
    return max(math.ceil(seconds / step_s), 1) if seconds > 0 else 0


def _check_finite(losses: torch.Tensor, epoch: int) -> None:
    """A diverged variant fails, naming where: its numbers would otherwise be NaN shown as n/a."""
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        raise FloatingPointError(f"loss is not finite at epoch {epoch}, step {int(bad[0])}")


def _inference(trainer: Trainer, val_loader, variant: Variant, cfg: RunConfig) -> list[dict]:
    """Eval-mode, no-grad throughput on real validation batches held on the device."""
    batch_sizes = sorted(set(cfg.infer_batch_sizes + (variant.batch_size,)))
    batches = []
    for batch in val_loader:
        batches.append(batch)
        if sum(len(b[2]) for b in batches) >= batch_sizes[-1]:
            break
    rgb_all, lidar_all = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    rows = []
    trainer.model.eval()
    with torch.no_grad():
        for batch_size in (b for b in batch_sizes if b <= len(rgb_all)):
            rgb, lidar = rgb_all[:batch_size], lidar_all[:batch_size]
            ms = time_calls(lambda: trainer.logits(rgb, lidar), cfg.infer_iters, cfg.device, warmup=3)
            rows.append({"variant": variant.name, "seed": cfg.seed, "batch_size": batch_size, "samples_per_s": rate(ms, batch_size),
                         **{f"ms_{k}": v for k, v in percentiles(ms).items()}})
    trainer.model.train()
    return rows


def _reference(variant: Variant, cfg: RunConfig, ctx: RunContext) -> list[float]:
    """The plain loop's samples/s of each round for the variant's model settings, once per run
    (the loader is not part of it, so variants that differ only in loader share it)."""
    if cfg.reference_steps < 1:
        return []
    key = reference_key(variant)
    if key not in ctx.reference_cache:
        ctx.reference_cache[key] = reference_samples_per_s(variant, cfg.device, cfg.reference_steps,
                                                           warmup=cfg.warmup_steps, lr=cfg.lr, seed=cfg.seed,
                                                           kernels=cfg.kernels)
    return ctx.reference_cache[key]


def reference_key(variant: Variant) -> Variant:
    """The model settings the plain loop depends on: the variant without its loader and epochs."""
    return replace(variant, loader="", epochs=None)


def measure(variant: Variant, cfg: RunConfig, ctx: RunContext | None = None) -> VariantResult:
    """Runs a variant `cfg.repeats` times (its own epochs where it sets them) and returns its
    result row (all but the NVML columns, which the parent adds from its timeline), curves,
    inference rows and phase windows."""
    ctx = ctx or RunContext()
    if variant.epochs:  # a pipeline probe: a loader's speed over a few epochs. Its energy is left to the
        # epochs' windows, and its inference and robustness to the row of the same model settings
        # (neither depends on the loader), so a probe costs its epochs only
        cfg = replace(cfg, epochs=variant.epochs, energy_window_s=0.0, infer_iters=0, robustness=False)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # reset() keeps them; graphs and breaks are per variant
    peak_was_reset = memory.reset_peak(cfg.device)
    runs, marks = [], []
    for repeat in range(cfg.repeats):
        marks.append((time.perf_counter(), f"{variant.name}:train:{repeat}"))
        runs.append(train_once(variant, cfg, ctx, repeat))
        if runs[-1].energy_window is not None:  # inside the training phase, before the epochs evaluated after it
            window = runs[-1].energy_window
            marks += [(window[0], f"{variant.name}:energy"), (window[1], f"{variant.name}:train:{repeat}")]
    marks.append((time.perf_counter(), f"{variant.name}:inference"))
    last = runs[-1]
    inference = _inference(last.trainer, last.val_loader, variant, cfg) if cfg.infer_iters > 0 else []
    if cfg.robustness:
        marks.append((time.perf_counter(), f"{variant.name}:robustness"))
    robustness = _robustness(last, variant, cfg) if cfg.robustness else []
    peak = memory.read_peak(cfg.device, peak_was_reset)
    dynamo = _dynamo_counts()  # before the reference loop, which compiles a model of its own
    marks.append((time.perf_counter(), f"{variant.name}:reference"))
    reference = _reference(variant, cfg, ctx)
    marks.append((time.perf_counter(), "idle"))
    row = summarise(variant, cfg, runs, inference, dynamo, reference)
    row.update(peak)
    phases = Phases(last.t_start, last.t_end, len(last.data_ms), variant.batch_size, last.time_to_target,
                    last.warmup_window, last.steady_windows, last.eval_windows, sorted(marks), last.energy_window,
                    last.energy_steps)
    return VariantResult(row, [c for r in runs for c in r.curves], inference, robustness,
                         step_rows(variant, cfg, runs), phases, reference)


def step_rows(variant: Variant, cfg: RunConfig, runs: list[TrainingRun]) -> list[dict]:
    """The timed steps (past the warm-up) of every repeat, in run order: per-step times keep the
    autocorrelation a verdict on a short run must respect (reports/stats.py compare_series)."""
    rows = []
    for repeat, run in enumerate(runs):
        epochs = np.repeat(np.arange(len(run.epoch_steps)), run.epoch_steps)
        for step in range(cfg.warmup_steps, len(run.data_ms)):
            rows.append({"variant": variant.name, "seed": cfg.seed, "world_size": cfg.world_size, "repeat": repeat,
                         "epoch": int(epochs[step]), "step": step, "data_ms": float(run.data_ms[step]),
                         "compute_ms": float(run.compute_ms[step])})
    return rows


def _robustness(run: TrainingRun, variant: Variant, cfg: RunConfig) -> list[dict]:
    """The last trained model's validation accuracy under each sensor degradation (eval mode,
    the validation loader's order, one generator per condition seeded with the run's seed)."""
    from bench.worker.robustness import CONDITIONS, evaluate_robustness
    trainer = run.trainer
    trainer.model.eval()
    try:
        rows = evaluate_robustness(trainer.logits, run.val_loader, CONDITIONS, cfg.device, seed=cfg.seed)
    finally:
        trainer.model.train()
    if cfg.world_size > 1:
        rows = [_reduce_condition(row, variant.batch_size, cfg) for row in rows]
    return [{"variant": variant.name, "seed": cfg.seed, **row} for row in rows]


def _reduce_condition(row: dict, batch_size: int, cfg: RunConfig) -> dict:
    """A robustness row over every rank's validation shard (its batches are full: drop_last)."""
    sums = distributed.reduce_sums({"correct": row["accuracy"] * row["samples"] / 100,
                                    "loss": row["val_loss"] * row["samples"] / batch_size,
                                    "samples": row["samples"]}, cfg.device)
    return {**row, "accuracy": 100.0 * sums["correct"] / sums["samples"],
            "val_loss": sums["loss"] * batch_size / sums["samples"], "samples": int(sums["samples"])}


def summarise(variant: Variant, cfg: RunConfig, runs: list[TrainingRun], inference: list[dict], dynamo: dict,
              reference: list[float]) -> dict:
    """The result row of a variant's training runs (everything but memory and NVML columns)."""
    last, w = runs[-1], cfg.warmup_steps
    data_ms = np.concatenate([r.data_ms[w:] for r in runs])
    compute_ms = np.concatenate([r.compute_ms[w:] for r in runs])
    step_ms = data_ms + compute_ms
    repeat_sps = [_global_rate(r.data_ms[w:] + r.compute_ms[w:], variant.batch_size, cfg) for r in runs if len(r.data_ms) > w]
    windows = repeat_sps if cfg.repeats > 1 else last.epoch_sps
    train_sps = float(np.mean(repeat_sps)) if repeat_sps else math.nan
    flops, flops_stored = _flops_per_sample(last.trainer)
    gpu_name = torch.cuda.get_device_name(cfg.device) if cfg.device.type == "cuda" else ""
    timed_frames = sum(r.timed_frames for r in runs)
    infer_own = next((r for r in inference if r["batch_size"] == variant.batch_size), {})
    curves = [c for r in runs for c in r.curves]
    compiled = variant.compiled
    return {
        **variant.settings(), "seed": cfg.seed, "world_size": cfg.world_size, "status": "ok", "error": "",
        "epochs": cfg.epochs, "repeats": cfg.repeats,
        "train_samples": len(cfg.train_ids), "val_samples": len(cfg.val_ids), "loader_form": last.val_loader.form,
        "optimizer": last.trainer.optimizer_name, "params": count_parameters(last.trainer.model),
        "params_stored": count_stored_parameters(last.trainer.model),
        "val_loss": float(np.mean([r.curves[-1]["val_loss"] for r in runs])),
        "accuracy": float(np.mean([r.curves[-1]["accuracy"] for r in runs])),
        "sec_per_epoch": float(np.mean([c["epoch_s"] for c in curves])), "first_epoch_s": last.curves[0]["epoch_s"],
        "train_samples_per_s": train_sps,
        "train_samples_per_s_std": float(np.std(windows, ddof=1)) if len(windows) > 1 else math.nan,
        **efficiency(train_sps, windows, reference),  # with the plain loop's rounds, an interval
        **{f"step_ms_{k}": v for k, v in percentiles(step_ms).items()},
        "data_wait_ms_mean": float(data_ms.mean()) if len(data_ms) else math.nan,
        "compute_ms_mean": float(compute_ms.mean()) if len(compute_ms) else math.nan,
        "data_wait_share": float(data_ms.sum() / step_ms.sum()) if len(step_ms) else math.nan,
        "infer_samples_per_s": infer_own.get("samples_per_s", math.nan), "infer_ms_p50": infer_own.get("ms_p50", math.nan),
        "compile_s": _compile_seconds(last, w, np.median(step_ms) if len(step_ms) else math.nan),
        "compiled_graphs": dynamo["graphs"] if compiled else "", "graph_breaks": dynamo["graph_breaks"] if compiled else "",
        "recompiles_timed": timed_frames if compiled else "", "suspect": bool(compiled and timed_frames > 0),
        "target_acc": cfg.target_acc, "time_to_target_s": last.time_to_target,
        "final_train_loss": last.curves[-1]["train_loss"], "flops_per_sample": flops,
        "flops_per_sample_stored": flops_stored,
        # train_sps is every rank's samples over the slowest rank's time: one GPU did 1 / world_size of them
        "mfu_per_gpu": mfu.mfu(flops, train_sps / cfg.world_size, gpu_name, _peak_precision(variant))
        if gpu_name else None,
        "peak_mem_excludes": memory.excluded(cfg.device, variant.loader),
        "samples_trained": sum(r.samples for r in runs) * cfg.world_size,  # every rank trains an equal shard
        "kernels": ",".join(last.trainer.kernels + _loader_kernels(variant, cfg)), "note": last.trainer.note,
    }


def _compile_seconds(run: TrainingRun, warmup_steps: int, steady_step_ms: float) -> float:
    """Extra time of the warm-up steps over steady steps, plus the first evaluation's extra time
    over the later ones (a compiled model compiles its eval-mode graph there)."""
    warm = run.data_ms[:warmup_steps] + run.compute_ms[:warmup_steps]
    seconds = float(warm.sum() - len(warm) * steady_step_ms) / 1000
    evals = [c["eval_s"] for c in run.curves]
    if len(evals) > 1:
        seconds += evals[0] - float(np.median(evals[1:]))
    return max(seconds, 0.0)


def _peak_precision(variant: Variant) -> str:
    """The peak an fp32 variant is held to: TF32 when cuDNN may use it for the convolutions."""
    if variant.precision == "fp32" and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return variant.precision


def _flops_per_sample(trainer: Trainer) -> tuple[float, float]:
    """Training FLOPs per sample, (logical, stored), counted on a 2-sample batch with eager models:
    FLOPs depend on shapes, not values or precision. Logical FLOPs are the seed-width network's
    (built on the meta device: no memory, no compute), the work the model does, so MFU stays
    comparable across channel layouts; stored FLOPs are the trained model's, the zero padding of
    aligned widths included (1.10x the logical for add)."""
    variant = trainer.variant
    with torch.device("meta"):
        seed_widths = build_model(variant.arch, variant.downsample, channels="seed")
        zeros = torch.zeros(2, 4, 64, 64)
        logical = mfu.train_flops_per_sample(seed_widths, zeros, zeros)
    rgb, lidar = trainer.inputs(torch.zeros(2, 4, 64, 64, device=trainer.device), torch.zeros(2, 4, 64, 64, device=trainer.device))
    return logical, mfu.train_flops_per_sample(trainer.model, rgb, lidar)


def error_line(error: BaseException, limit: int = 500) -> str:
    """`Type: message` on one line (the exception's own words, not a traceback), for a CSV or table cell."""
    text = traceback.format_exception_only(type(error), error)[-1]
    return " ".join(text.split())[:limit]


def failed_row(variant: Variant, error: BaseException) -> dict:
    """The row of a variant that raised: its settings, status failed and the error's last line."""
    return {**variant.settings(), "status": "failed", "error": error_line(error)}

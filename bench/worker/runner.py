"""One measurement path for every variant: train, evaluate, time inference, record everything.

A variant (bench.variants.Variant) only changes data here: which network, precision, compiler
mode, memory format, batch size and loader. The loop itself is the same for all of them.
measure() runs the phases (train_once per repeat, inference, the reference loop) and then
summarises them into one result row.
"""

import math
import time
import traceback
from dataclasses import dataclass, field, replace

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
from models import count_parameters, count_stored_parameters

__all__ = ["Trainer", "TrainingRun", "VariantResult", "failed_row", "measure"]

Window = tuple[float, float]  # perf_counter seconds


@dataclass
class VariantResult:
    row: dict
    curves: list[dict]
    inference: list[dict]
    robustness: list[dict] = field(default_factory=list)  # a row per bench.worker.robustness condition


@dataclass
class TrainingRun:
    """One fresh model trained for the run's epochs: per-step times, curves and the perf_counter
    windows of its phases (for the NVML energy of each)."""
    trainer: Trainer
    val_loader: object
    t_start: float
    t_end: float = math.nan
    curves: list[dict] = field(default_factory=list)
    data_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    compute_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    epoch_sps: list[float] = field(default_factory=list)  # steady samples/s of each epoch
    steps: int = 0
    timed_frames: int = 0  # Dynamo frames compiled during the timed steps: recompilations
    time_to_target: float = math.nan
    warmup_window: Window | None = None  # the warm-up steps, where a compiled model compiles
    steady_windows: list[Window] = field(default_factory=list)  # the timed steps of each epoch
    eval_windows: list[Window] = field(default_factory=list)

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
        key = ("resident", "train" if train else "val")
        if key not in ctx.loader_cache:
            ctx.loader_cache[key] = decode_split(cfg.data_root, ids, progress=cfg.progress)
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
    (its batches arrive raw on the device; the other loaders prepare on the host or once)."""
    return ["input_prep"] if variant.loader == "dali" and use_kernel("input_prep", cfg.device, cfg.kernels) else []


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
    """Trains one fresh model for cfg.epochs, evaluating after each epoch as the seed did."""
    trainer = Trainer(variant, cfg)
    train_loader, val_loader = _loader(variant, cfg, ctx, cfg.train_ids, True), _loader(variant, cfg, ctx, cfg.val_ids, False)
    times = StepTimes(Clock(cfg.device))
    run = TrainingRun(trainer, val_loader, t_start=time.perf_counter())
    data_ms, compute_ms = [], []
    max_steps = distributed.min_over_ranks(len(train_loader), cfg.device) if cfg.world_size > 1 else len(train_loader)
    epochs = tqdm(range(cfg.epochs), desc=variant.name, unit="epoch", disable=not cfg.progress, leave=False)
    for epoch in epochs:
        t_epoch = time.perf_counter()
        losses, steady_start = _train_epoch(run, train_loader, times, cfg, f"epoch {epoch}", max_steps)
        epoch_data, epoch_compute = times.collect()  # synchronises: the epoch's work is done
        _check_finite(losses, epoch)
        steps = len(losses)
        t_eval = time.perf_counter()
        if steady_start is not None:
            run.steady_windows.append((steady_start, t_eval))
        skip = max(cfg.warmup_steps - sum(len(d) for d in data_ms), 0)
        data_ms.append(epoch_data)
        compute_ms.append(epoch_compute)
        epoch_sps = _global_rate((epoch_data + epoch_compute)[skip:], variant.batch_size, cfg)
        if not math.isnan(epoch_sps):
            run.epoch_sps.append(epoch_sps)
        lr = float(trainer.optimizer.param_groups[0]["lr"])  # a tensor on the device under --compile-mode step
        trainer.scheduler.step()
        val_loss, accuracy = trainer.evaluate(val_loader)  # .item() inside synchronises
        if not math.isfinite(val_loss):
            raise FloatingPointError(f"validation loss is not finite at epoch {epoch}")
        t_done = time.perf_counter()
        run.eval_windows.append((t_eval, t_done))
        elapsed = t_done - run.t_start
        if math.isnan(run.time_to_target) and accuracy >= cfg.target_acc:
            run.time_to_target = elapsed
        train_loss = distributed.reduce_sums({"sum": losses.sum(), "steps": steps}, cfg.device) \
            if cfg.world_size > 1 else {"sum": losses.sum().item(), "steps": steps}
        run.curves.append({"variant": variant.name, "seed": cfg.seed, "repeat": repeat, "epoch": epoch,
                           "train_loss": train_loss["sum"] / max(train_loss["steps"], 1), "val_loss": val_loss, "accuracy": accuracy,
                           "lr": lr, "epoch_s": t_eval - t_epoch, "eval_s": t_done - t_eval,
                           "train_samples_per_s": epoch_sps, "elapsed_s": elapsed})
        epochs.set_postfix(acc=f"{accuracy:.1f}", loss=f"{val_loss:.4f}")
    run.t_end = time.perf_counter()
    run.data_ms, run.compute_ms = np.concatenate(data_ms), np.concatenate(compute_ms)
    return run


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
    key = replace(variant, loader="", epochs=None)
    if key not in ctx.reference_cache:
        ctx.reference_cache[key] = reference_samples_per_s(variant, cfg.device, cfg.reference_steps,
                                                           warmup=cfg.warmup_steps, lr=cfg.lr, seed=cfg.seed)
    return ctx.reference_cache[key]


def _nvml_columns(run: TrainingRun, cfg: RunConfig, ctx: RunContext) -> dict:
    """Energy and utilisation of the timed steady steps, with the compile (warm-up steps),
    validation and whole-phase energy beside them, and the energy to the target from the start."""
    from bench.instruments.nvml import nvml_unavailable_reason, summarize_windows, window_energy
    if ctx.sampler is None:
        return {"nvml_note": ctx.nvml_reason or nvml_unavailable_reason(cfg.device) or "NVML sampler not running"}
    timeline = ctx.sampler.timeline()
    steady_samples = max(len(run.data_ms) - cfg.warmup_steps, 0) * run.trainer.variant.batch_size
    columns = summarize_windows(timeline, run.steady_windows, ctx.idle_power_w, steady_samples)
    columns["compile_energy_j"] = window_energy(timeline, [run.warmup_window])[0] if run.warmup_window else math.nan
    columns["val_energy_j"] = window_energy(timeline, run.eval_windows)[0]
    columns["phase_energy_j"] = window_energy(timeline, [(run.t_start, run.t_end)])[0]
    if not math.isnan(run.time_to_target):
        columns["j_to_target"] = window_energy(timeline, [(run.t_start, run.t_start + run.time_to_target)])[0]
    return columns


def measure(variant: Variant, cfg: RunConfig, ctx: RunContext | None = None) -> VariantResult:
    """Runs a variant `cfg.repeats` times (its own epochs where it sets them) and returns its
    result row, curves and inference rows."""
    ctx = ctx or RunContext()
    cfg = replace(cfg, epochs=variant.epochs) if variant.epochs else cfg
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # reset() keeps them; graphs and breaks are per variant
    memory.reset_peak(cfg.device)
    runs = []
    for repeat in range(cfg.repeats):
        _mark(ctx, f"{variant.name}:train:{repeat}")
        runs.append(train_once(variant, cfg, ctx, repeat))
    _mark(ctx, f"{variant.name}:inference")
    last = runs[-1]
    inference = _inference(last.trainer, last.val_loader, variant, cfg) if cfg.infer_iters > 0 else []
    if cfg.robustness:
        _mark(ctx, f"{variant.name}:robustness")
    robustness = _robustness(last, variant, cfg) if cfg.robustness else []
    peak = memory.read_peak(cfg.device)
    dynamo = _dynamo_counts()  # before the reference loop, which compiles a model of its own
    _mark(ctx, f"{variant.name}:reference")
    reference = _reference(variant, cfg, ctx)
    _mark(ctx, "idle")
    row = summarise(variant, cfg, runs, inference, dynamo, reference)
    row.update(peak)
    row.update(_nvml_columns(last, cfg, ctx))
    return VariantResult(row, [c for r in runs for c in r.curves], inference, robustness)


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


def _mark(ctx: RunContext, label: str) -> None:
    if ctx.sampler is not None:
        ctx.sampler.mark(label)


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
    flops = _flops_per_sample(last.trainer)
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
        "mfu": mfu.mfu(flops, train_sps, gpu_name, _peak_precision(variant)) if gpu_name else None,
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


def _flops_per_sample(trainer: Trainer) -> float:
    """Counted on a 2-sample batch with the eager model: FLOPs depend on shapes, not values or precision."""
    rgb, lidar = trainer.inputs(torch.zeros(2, 4, 64, 64, device=trainer.device), torch.zeros(2, 4, 64, 64, device=trainer.device))
    return mfu.train_flops_per_sample(trainer.model, rgb, lidar)


def error_line(error: BaseException, limit: int = 500) -> str:
    """`Type: message` on one line (the exception's own words, not a traceback), for a CSV or table cell."""
    text = traceback.format_exception_only(type(error), error)[-1]
    return " ".join(text.split())[:limit]


def failed_row(variant: Variant, error: BaseException) -> dict:
    """The row of a variant that raised: its settings, status failed and the error's last line."""
    return {**variant.settings(), "status": "failed", "error": error_line(error)}

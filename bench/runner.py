"""One measurement path for every variant: train, evaluate, time inference, record everything.

A variant (bench.variants.Variant) only changes data here: which network, precision, compiler
mode, memory format, batch size and loader. The loop itself is the same for all of them.
"""

import math
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from bench.config import RunConfig, RunContext
from bench.instruments import memory, mfu
from bench.instruments.timing import Clock, StepTimes, percentiles
from bench.variants import Variant
from loaders import make_loader
from loaders.split import check_class_prior, class_share
from models import build_model, count_parameters

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class VariantResult:
    row: dict
    curves: list[dict]
    inference: list[dict]


def _dynamo_counts() -> dict:
    counters = torch._dynamo.utils.counters
    return {"frames": counters["frames"]["total"], "graphs": counters["stats"]["unique_graphs"],
            "graph_breaks": sum(counters["graph_break"].values())}


def _loader(variant: Variant, cfg: RunConfig, ctx: RunContext, ids: list[str], train: bool):
    options = {}
    if variant.loader == "resident":
        from loaders.resident import decode_split
        key = ("resident", "train" if train else "val")
        if key not in ctx.loader_cache:
            ctx.loader_cache[key] = decode_split(cfg.data_root, ids, progress=cfg.progress)
        options["tensors"] = ctx.loader_cache[key]
    loader = make_loader(variant.loader, cfg.data_root, ids, batch_size=variant.batch_size, shuffle=train,
                         drop_last=True, seed=cfg.seed, device=cfg.device, workers=cfg.workers, **options)
    if len(loader) == 0:
        split = "train" if train else "val"
        raise ValueError(f"the {split} split has {len(ids)} samples, fewer than --batch-size {variant.batch_size}")
    return loader


class Trainer:
    """Model, optimiser and the settings of one variant; step() is the unit that gets timed."""

    def __init__(self, variant: Variant, cfg: RunConfig):
        self.variant, self.device = variant, cfg.device
        torch.manual_seed(cfg.seed)
        self.memory_format = torch.channels_last if variant.memory_format == "channels_last" else torch.contiguous_format
        self.model = build_model(variant.arch, variant.downsample).to(self.device, memory_format=self.memory_format)
        self.forward = self.model if variant.compile_mode == "none" else torch.compile(self.model, mode=variant.compile_mode)
        self.cudagraphs = variant.compile_mode in ("reduce-overhead", "max-autotune") and self.device.type == "cuda"
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cfg.epochs)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=variant.precision == "fp16")
        self.criterion = torch.nn.CrossEntropyLoss()

    def autocast(self):
        if self.variant.precision == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=AMP_DTYPES[self.variant.precision])

    def inputs(self, rgb, lidar):
        return (rgb.contiguous(memory_format=self.memory_format), lidar.contiguous(memory_format=self.memory_format))

    def logits(self, rgb, lidar):
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        with self.autocast():
            return self.forward(*self.inputs(rgb, lidar))

    def step(self, rgb, lidar, label) -> torch.Tensor:
        loss = self.criterion(self.logits(rgb, lidar).float(), label)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach().clone()

    @torch.no_grad()
    def evaluate(self, loader) -> tuple[float, float]:
        """(val_loss as the mean of batch losses, accuracy %), as the seed computed them."""
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        batches = total = 0
        for rgb, lidar, label in loader:
            logits = self.logits(rgb, lidar).float()
            loss_sum += self.criterion(logits, label)
            correct += (logits.argmax(dim=1) == label).sum()
            batches, total = batches + 1, total + len(label)
        self.model.train()
        return loss_sum.item() / batches, 100.0 * correct.item() / total


def _train_once(variant: Variant, cfg: RunConfig, ctx: RunContext, repeat: int) -> dict:
    """Trains one fresh model; returns per-step times, per-epoch curves and the trainer."""
    trainer = Trainer(variant, cfg)
    train_loader, val_loader = _loader(variant, cfg, ctx, cfg.train_ids, True), _loader(variant, cfg, ctx, cfg.val_ids, False)
    clock = Clock(cfg.device)
    times = StepTimes(clock)
    curves, data_ms, compute_ms, epoch_windows = [], [], [], []
    timed_frames = 0
    time_to_target = math.nan
    step_index = 0
    t_start = time.perf_counter()
    epochs = tqdm(range(cfg.epochs), desc=variant.name, unit="epoch", disable=not cfg.progress, leave=False)
    for epoch in epochs:
        t_epoch = time.perf_counter()
        losses = torch.zeros(len(train_loader), device=cfg.device)
        steps = 0
        batches = iter(tqdm(train_loader, desc=f"epoch {epoch}", unit="step", disable=not cfg.progress, leave=False))
        frames_before = None
        while True:
            start = clock.mark()
            try:
                rgb, lidar, label = next(batches)
            except StopIteration:
                break
            ready = clock.mark()
            if step_index == 0:
                check_class_prior(label.tolist(), class_share(cfg.train_ids))
            if frames_before is None and step_index >= cfg.warmup_steps:  # timed steps start here
                frames_before = _dynamo_counts()["frames"]
            losses[steps] = trainer.step(rgb, lidar, label)
            times.add(start, ready, clock.mark())
            steps, step_index = steps + 1, step_index + 1
        epoch_data, epoch_compute = times.collect()
        epoch_s = time.perf_counter() - t_epoch
        _check_finite(losses[:steps], epoch)
        if frames_before is not None:
            timed_frames += _dynamo_counts()["frames"] - frames_before
        data_ms.append(epoch_data)
        compute_ms.append(epoch_compute)
        lr = trainer.optimizer.param_groups[0]["lr"]
        trainer.scheduler.step()
        t_eval = time.perf_counter()
        val_loss, accuracy = trainer.evaluate(val_loader)  # .item() inside synchronises
        if not math.isfinite(val_loss):
            raise FloatingPointError(f"validation loss is not finite at epoch {epoch}")
        elapsed = time.perf_counter() - t_start
        eval_s = elapsed - (t_eval - t_start)
        if math.isnan(time_to_target) and accuracy >= cfg.target_acc:
            time_to_target = elapsed
        skip = max(cfg.warmup_steps - sum(len(d) for d in data_ms[:-1]), 0)
        steady_ms = (epoch_data + epoch_compute)[skip:]
        window_sps = len(steady_ms) * variant.batch_size / (steady_ms.sum() / 1000) if len(steady_ms) else math.nan
        if not math.isnan(window_sps):
            epoch_windows.append(window_sps)
        curves.append({"variant": variant.name, "repeat": repeat, "epoch": epoch, "train_loss": losses[:steps].sum().item() / max(steps, 1),
                       "val_loss": val_loss, "accuracy": accuracy, "lr": lr, "epoch_s": epoch_s, "eval_s": eval_s,
                       "train_samples_per_s": window_sps, "elapsed_s": elapsed})
        epochs.set_postfix(acc=f"{accuracy:.1f}", loss=f"{val_loss:.4f}")
    return {"trainer": trainer, "val_loader": val_loader, "curves": curves, "t_start": t_start,
            "t_end": time.perf_counter(), "time_to_target": time_to_target, "timed_frames": timed_frames,
            "data_ms": np.concatenate(data_ms), "compute_ms": np.concatenate(compute_ms), "epoch_windows": epoch_windows}


def _check_finite(losses: torch.Tensor, epoch: int) -> None:
    """A diverged variant fails, naming where: its numbers would otherwise be NaN shown as n/a."""
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        raise FloatingPointError(f"loss is not finite at epoch {epoch}, step {int(bad[0])}")


def _inference(trainer: Trainer, val_loader, variant: Variant, cfg: RunConfig) -> list[dict]:
    """Eval-mode, no-grad throughput on real validation batches held on the device."""
    rows = []
    batches = []
    for batch in val_loader:
        batches.append(batch)
        if sum(len(b[2]) for b in batches) >= max(cfg.infer_batch_sizes + (variant.batch_size,)):
            break
    rgb_all = torch.cat([b[0] for b in batches])
    lidar_all = torch.cat([b[1] for b in batches])
    clock = Clock(cfg.device)
    trainer.model.eval()
    for batch_size in sorted(set(cfg.infer_batch_sizes + (variant.batch_size,))):
        if batch_size > len(rgb_all):
            continue
        rgb, lidar = rgb_all[:batch_size], lidar_all[:batch_size]
        with torch.no_grad():
            for _ in range(3):
                trainer.logits(rgb, lidar)
            marks = [clock.mark()]
            for _ in range(cfg.infer_iters):
                trainer.logits(rgb, lidar)
                marks.append(clock.mark())
            clock.sync()
        ms = np.array([clock.elapsed_ms(a, b) for a, b in zip(marks, marks[1:])])
        rows.append({"variant": variant.name, "batch_size": batch_size,
                     "samples_per_s": batch_size * len(ms) / (ms.sum() / 1000),
                     **{f"ms_{k}": v for k, v in percentiles(ms).items()}})
    trainer.model.train()
    return rows


def _energy(cfg: RunConfig, ctx: RunContext, t0: float, t1: float, samples: int, t_target: float) -> dict:
    from bench.instruments.nvml import nvml_unavailable_reason, summarize
    if ctx.sampler is None:
        return {"nvml_note": ctx.nvml_reason or nvml_unavailable_reason(cfg.device) or "NVML sampler not running"}
    timeline = ctx.sampler.timeline()
    summary = summarize(timeline, t0, t1, ctx.idle_power_w, samples)
    if not math.isnan(t_target):
        summary["j_to_target"] = summarize(timeline, t0, t0 + t_target, ctx.idle_power_w, samples)["energy_j"]
    return summary


def measure(variant: Variant, cfg: RunConfig, ctx: RunContext | None = None) -> VariantResult:
    """Runs a variant `cfg.repeats` times and returns its result row, curves and inference rows."""
    ctx = ctx or RunContext()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # reset() keeps them; graphs and breaks are per variant
    memory.reset_peak(cfg.device)
    runs = []
    for repeat in range(cfg.repeats):
        if ctx.sampler is not None:
            ctx.sampler.mark(f"{variant.name}:train:{repeat}")
        runs.append(_train_once(variant, cfg, ctx, repeat))
    if ctx.sampler is not None:
        ctx.sampler.mark(f"{variant.name}:inference")
    last = runs[-1]
    trainer = last["trainer"]
    inference = _inference(trainer, last["val_loader"], variant, cfg) if cfg.infer_iters > 0 else []
    peak = memory.read_peak(cfg.device)
    if ctx.sampler is not None:
        ctx.sampler.mark("idle")

    steady = [(r["data_ms"][cfg.warmup_steps:], r["compute_ms"][cfg.warmup_steps:]) for r in runs]
    data_ms = np.concatenate([d for d, _ in steady])
    compute_ms = np.concatenate([c for _, c in steady])
    step_ms = data_ms + compute_ms
    repeat_sps = [len(d) * variant.batch_size / ((d.sum() + c.sum()) / 1000) for d, c in steady if len(d)]
    windows = repeat_sps if cfg.repeats > 1 else last["epoch_windows"]
    train_sps = float(np.mean(repeat_sps)) if repeat_sps else math.nan
    compile_s = _compile_seconds(last, cfg.warmup_steps, np.median(step_ms) if len(step_ms) else math.nan)
    samples_trained = sum(len(r["data_ms"]) for r in runs) * variant.batch_size
    flops = _flops_per_sample(trainer)
    gpu_name = torch.cuda.get_device_name(cfg.device) if cfg.device.type == "cuda" else ""
    dynamo = _dynamo_counts()
    infer_own = next((r for r in inference if r["batch_size"] == variant.batch_size), {})
    curves = [c for r in runs for c in r["curves"]]
    final = last["curves"][-1]
    row = {
        **variant.settings(),
        "status": "ok",
        "error": "",
        "epochs": cfg.epochs,
        "repeats": cfg.repeats,
        "train_samples": len(cfg.train_ids),
        "val_samples": len(cfg.val_ids),
        "loader_form": last["val_loader"].form,
        "params": count_parameters(trainer.model),
        "val_loss": float(np.mean([r["curves"][-1]["val_loss"] for r in runs])),
        "accuracy": float(np.mean([r["curves"][-1]["accuracy"] for r in runs])),
        "sec_per_epoch": float(np.mean([c["epoch_s"] for c in curves])),
        "first_epoch_s": last["curves"][0]["epoch_s"],
        "train_samples_per_s": train_sps,
        "train_samples_per_s_std": float(np.std(windows, ddof=1)) if len(windows) > 1 else math.nan,
        **{f"step_ms_{k}": v for k, v in percentiles(step_ms).items()},
        "data_wait_ms_mean": float(data_ms.mean()) if len(data_ms) else math.nan,
        "compute_ms_mean": float(compute_ms.mean()) if len(compute_ms) else math.nan,
        "data_wait_share": float(data_ms.sum() / step_ms.sum()) if len(step_ms) else math.nan,
        "infer_samples_per_s": infer_own.get("samples_per_s", math.nan),
        "infer_ms_p50": infer_own.get("ms_p50", math.nan),
        "compile_s": compile_s,
        "compiled_graphs": dynamo["graphs"] if variant.compile_mode != "none" else "",
        "graph_breaks": dynamo["graph_breaks"] if variant.compile_mode != "none" else "",
        "recompiles_timed": sum(r["timed_frames"] for r in runs) if variant.compile_mode != "none" else "",
        "suspect": bool(variant.compile_mode != "none" and sum(r["timed_frames"] for r in runs) > 0),
        "target_acc": cfg.target_acc,
        "time_to_target_s": last["time_to_target"],
        "final_train_loss": final["train_loss"],
        **peak,
        "flops_per_sample": flops,
        "mfu": mfu.mfu(flops, train_sps, gpu_name, _peak_precision(variant)) if gpu_name else None,
        **_energy(cfg, ctx, last["t_start"], last["t_end"], len(last["data_ms"]) * variant.batch_size,
                  last["time_to_target"]),
        "samples_trained": samples_trained,
    }
    return VariantResult(row, curves, inference)


def _compile_seconds(run: dict, warmup_steps: int, steady_step_ms: float) -> float:
    """Extra time of the warm-up steps over steady steps, plus the first evaluation's extra time
    over the later ones (a compiled model compiles its eval-mode graph there)."""
    warm = run["data_ms"][:warmup_steps] + run["compute_ms"][:warmup_steps]
    seconds = float(warm.sum() - len(warm) * steady_step_ms) / 1000
    evals = [c["eval_s"] for c in run["curves"]]
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


def failed_row(variant: Variant, error: BaseException) -> dict:
    """The row of a variant that raised: its settings, status failed and the error's last line."""
    lines = traceback.format_exception_only(type(error), error)
    return {**variant.settings(), "status": "failed", "error": " ".join(lines[-1].split())[:500]}

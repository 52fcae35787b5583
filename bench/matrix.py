"""Runs a list of variants into a run directory: rows written as each finishes, failures recorded."""

import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bench.config import RunConfig, RunContext
from bench.runner import failed_row, measure
from bench.variants import Variant
from reports.markdown import write_report
from reports.plots import write_plots
from reports.results import CURVE_COLUMNS, CURVES, INFERENCE, INFERENCE_COLUMNS, RESULT_COLUMNS, RESULTS, append_rows, done_variants

NVML_FILE = "nvml.csv"


def run_matrix(variants: list[Variant], cfg: RunConfig, run_dir: Path, fingerprint: dict, resume: bool = False,
               ctx: RunContext | None = None) -> int:
    """Measures each variant; returns how many failed. Ctrl-C still leaves a valid report."""
    ctx = ctx or RunContext()
    done = done_variants(run_dir) if resume else set()
    todo = [v for v in variants if v.name not in done]
    if done:
        print(f"--resume: {len(variants) - len(todo)} variants already done in {run_dir}, {len(todo)} to run")
    failures = 0
    try:
        for variant in tqdm(todo, desc="variants", unit="variant", disable=not cfg.progress):
            try:
                result = measure(variant, cfg, ctx)
            except (Exception, torch.OutOfMemoryError) as error:  # one broken variant must not end the run
                failures += 1
                tqdm.write(f"{variant.name} failed: {type(error).__name__}: {error}")
                append_rows(run_dir / RESULTS, [{**failed_row(variant, error), **fingerprint}], RESULT_COLUMNS)
                _free_memory(cfg)
                continue
            append_rows(run_dir / CURVES, result.curves, CURVE_COLUMNS)
            append_rows(run_dir / INFERENCE, result.inference, INFERENCE_COLUMNS)
            append_rows(run_dir / RESULTS, [{**result.row, **fingerprint}], RESULT_COLUMNS)
            row = result.row
            tqdm.write(f"{variant.name}: accuracy {row['accuracy']:.2f}%  val_loss {row['val_loss']:.4f}  "
                       f"{row['train_samples_per_s']:,.0f} train samples/s  {row['sec_per_epoch']:.2f} s/epoch")
            if ctx.sampler is not None:
                ctx.sampler.to_csv(run_dir / NVML_FILE)
    finally:
        if ctx.sampler is not None:
            ctx.sampler.to_csv(run_dir / NVML_FILE)
        write_report(run_dir)
        write_plots(run_dir)
    return failures


def _free_memory(cfg: RunConfig) -> None:
    if cfg.device.type == "cuda":
        torch.cuda.empty_cache()


def sampler_overhead(cfg: RunConfig, ctx: RunContext, variant: Variant, steps: int = 50, rounds: int = 3) -> dict:
    """Training throughput with and without the NVML sampler, alternated so drift hits both alike."""
    from bench.instruments.nvml import NvmlSampler
    from bench.runner import Trainer

    trainer = Trainer(variant, cfg)
    rgb = torch.rand(variant.batch_size, 4, 64, 64, device=cfg.device)
    lidar = torch.rand(variant.batch_size, 4, 64, 64, device=cfg.device)
    label = torch.randint(0, 2, (variant.batch_size,), device=cfg.device)

    def rate() -> float:
        torch.cuda.synchronize(cfg.device)
        start = time.perf_counter()
        for _ in range(steps):
            trainer.step(rgb, lidar, label)
        torch.cuda.synchronize(cfg.device)
        return steps * variant.batch_size / (time.perf_counter() - start)

    rate()  # warm-up
    without, with_sampler = [], []
    for _ in range(rounds):
        without.append(rate())
        with NvmlSampler(cfg.device, ctx.sampler.period_s):
            with_sampler.append(rate())
    base, sampled = float(np.median(without)), float(np.median(with_sampler))
    return {"samples_per_s_without": base, "samples_per_s_with": sampled,
            "overhead_pct": 100 * (base - sampled) / base if base else math.nan}

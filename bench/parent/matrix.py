"""Runs a list of variants, once per seed, into a run directory: rows written as each finishes,
failures recorded. Under torchrun every rank trains; only rank 0 writes."""

import math
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from bench.config import RunConfig, RunContext
from bench.distributed import broadcast_from_rank0, is_rank0
from bench.parent.rundir import row_stamp, timestamp
from bench.worker.runner import failed_row, measure
from bench.variants import Variant
from loaders.dataset import DatasetError
from reports.markdown import write_report
from reports.plots import write_plots
from reports.results import (CURVE_COLUMNS, CURVES, INFERENCE, INFERENCE_COLUMNS, RESULT_COLUMNS, RESULTS, append_rows,
                             done_runs)
from reports.robustness_report import ROBUSTNESS, ROBUSTNESS_COLUMNS

NVML_FILE = "nvml.csv"


def run_matrix(variants: list[Variant], cfg: RunConfig, run_dir: Path, fingerprint: dict, resume: bool = False,
               ctx: RunContext | None = None, seeds: list[int] | None = None) -> int:
    """Measures each variant once per seed (default: cfg.seed); returns how many failed. On
    --resume a (variant, seed) already done at this world size is skipped. Ctrl-C still leaves a
    valid report."""
    ctx = ctx or RunContext()
    seeds = seeds or [cfg.seed]
    writer = is_rank0()
    done = done_runs(run_dir, cfg.seed) if resume and writer else set()
    done = broadcast_from_rank0(done)  # every rank must skip the same runs
    todo = [(seed, v) for seed in seeds for v in variants if (v.name, seed, cfg.world_size) not in done]
    if resume and writer:
        print(f"--resume: {len(seeds) * len(variants) - len(todo)} (variant, seed) runs already done in {run_dir}, "
              f"{len(todo)} to run")
    failures = 0
    try:
        for seed, variant in tqdm(todo, desc="variants", unit="variant", disable=not (cfg.progress and writer)):
            seed_cfg = replace(cfg, seed=seed)
            run_keys = {"seed": seed, "world_size": cfg.world_size}
            started_at = timestamp()
            try:
                result = measure(variant, seed_cfg, ctx)
            except (Exception, torch.OutOfMemoryError) as error:  # one broken variant must not end the run
                failures += 1
                if writer:
                    tqdm.write(f"{variant.name} seed {seed} failed: {type(error).__name__}: {error}")
                    append_rows(run_dir / RESULTS, [{**failed_row(variant, error), **run_keys, **fingerprint,
                                                     **row_stamp(started_at)}], RESULT_COLUMNS)
                if isinstance(error, DatasetError):  # broken data fails every variant alike: stop at the first
                    raise
                _free_memory(cfg)
                continue
            if writer:
                _write_result(result, run_dir, {**fingerprint, **row_stamp(started_at)}, ctx,
                              seed if len(seeds) > 1 else None)
    finally:
        if writer:
            if ctx.sampler is not None:
                ctx.sampler.to_csv(run_dir / NVML_FILE)
            write_report(run_dir)
            write_plots(run_dir)
    return failures


def summary_line(row: dict, seed: int | None = None) -> str:
    """One console line per finished variant; a throughput too short to time reads n/a, not nan."""
    speed = row["train_samples_per_s"]
    speed = f"{speed:,.0f}" if math.isfinite(speed) else "n/a (no timed steps past the warm-up)"
    return (f"{row['variant']}{f' seed {seed}' if seed is not None else ''}: accuracy {row['accuracy']:.2f}%  "
            f"val_loss {row['val_loss']:.4f}  {speed} train samples/s  {row['sec_per_epoch']:.2f} s/epoch")


def _write_result(result, run_dir: Path, fingerprint: dict, ctx: RunContext, seed: int | None) -> None:
    append_rows(run_dir / CURVES, result.curves, CURVE_COLUMNS)
    append_rows(run_dir / INFERENCE, result.inference, INFERENCE_COLUMNS)
    if result.robustness:
        append_rows(run_dir / ROBUSTNESS, result.robustness, ROBUSTNESS_COLUMNS)
    append_rows(run_dir / RESULTS, [{**result.row, **fingerprint}], RESULT_COLUMNS)
    tqdm.write(summary_line(result.row, seed))
    if ctx.sampler is not None:
        ctx.sampler.to_csv(run_dir / NVML_FILE)


def _free_memory(cfg: RunConfig) -> None:
    if cfg.device.type == "cuda":
        torch.cuda.empty_cache()

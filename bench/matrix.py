"""Runs a list of variants into a run directory: rows written as each finishes, failures recorded."""

import math
from pathlib import Path

import torch
from tqdm import tqdm

from bench.config import RunConfig, RunContext
from bench.runner import failed_row, measure
from bench.variants import Variant
from loaders.dataset import DatasetError
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
                if isinstance(error, DatasetError):  # broken data fails every variant alike: stop at the first
                    raise
                _free_memory(cfg)
                continue
            append_rows(run_dir / CURVES, result.curves, CURVE_COLUMNS)
            append_rows(run_dir / INFERENCE, result.inference, INFERENCE_COLUMNS)
            append_rows(run_dir / RESULTS, [{**result.row, **fingerprint}], RESULT_COLUMNS)
            tqdm.write(summary_line(variant, result.row))
            if ctx.sampler is not None:
                ctx.sampler.to_csv(run_dir / NVML_FILE)
    finally:
        if ctx.sampler is not None:
            ctx.sampler.to_csv(run_dir / NVML_FILE)
        write_report(run_dir)
        write_plots(run_dir)
    return failures


def summary_line(variant: Variant, row: dict) -> str:
    """One console line per finished variant; a throughput too short to time reads n/a, not nan."""
    speed = row["train_samples_per_s"]
    speed = f"{speed:,.0f}" if math.isfinite(speed) else "n/a (no timed steps past the warm-up)"
    return (f"{variant.name}: accuracy {row['accuracy']:.2f}%  val_loss {row['val_loss']:.4f}  "
            f"{speed} train samples/s  {row['sec_per_epoch']:.2f} s/epoch")


def _free_memory(cfg: RunConfig) -> None:
    if cfg.device.type == "cuda":
        torch.cuda.empty_cache()

"""Runs a list of variants, once per seed, into a run directory: rows written as each finishes,
failures recorded. With isolation each (variant, seed) trains in a fresh worker process
(bench.parent.launcher); without it, in this process, and under torchrun every rank trains and
only rank 0 writes. Either way the NVML columns come from this process's sampler."""

import contextlib
import math
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from bench.config import RunConfig, RunContext
from bench.distributed import broadcast_from_rank0, is_rank0
from bench.parent.launcher import Isolation, Workers
from bench.parent.rundir import row_stamp, timestamp
from bench.worker.runner import VariantResult, failed_row, measure, reference_key
from bench.variants import Variant
from loaders.dataset import DatasetError
from reports.markdown import write_report
from reports.plots import write_plots
from reports.results import (CURVE_COLUMNS, CURVES, INFERENCE, INFERENCE_COLUMNS, RESULT_COLUMNS, RESULTS, STEP_COLUMNS,
                             STEPS, append_rows, done_runs)
from reports.robustness_report import ROBUSTNESS, ROBUSTNESS_COLUMNS

NVML_FILE = "nvml.csv"


def run_matrix(variants: list[Variant], cfg: RunConfig, run_dir: Path, fingerprint: dict, resume: bool = False,
               ctx: RunContext | None = None, seeds: list[int] | None = None, isolation: Isolation | None = None) -> int:
    """Measures each variant once per seed (default: cfg.seed), each in a fresh worker with
    `isolation`, else in this process; returns how many failed. On --resume a (variant, seed)
    already done at this world size is skipped. Ctrl-C still leaves a valid report."""
    ctx = ctx or RunContext()
    seeds = seeds or [cfg.seed]
    writer = is_rank0()
    done = done_runs(run_dir, cfg.seed) if resume and writer else set()
    done = broadcast_from_rank0(done)  # every rank must skip the same runs
    todo = [(seed, v) for seed in seeds for v in variants if (v.name, seed, cfg.world_size) not in done]
    if resume and writer:
        print(f"--resume: {len(seeds) * len(variants) - len(todo)} (variant, seed) runs already done in {run_dir}, "
              f"{len(todo)} to run")
    try:
        with contextlib.ExitStack() as stack:
            workers = stack.enter_context(Workers(_ahead(todo, cfg, isolation))) if isolation else None
            if isolation and any(v.loader == "resident" for _, v in todo):
                stack.enter_context(_decoded_splits(cfg, ctx))
            return _run_all(todo, cfg, run_dir, fingerprint, ctx, (isolation, workers), len(seeds) > 1, writer)
    finally:
        if writer:
            if ctx.sampler is not None:
                ctx.sampler.to_csv(run_dir / NVML_FILE)
            write_report(run_dir)
            write_plots(run_dir)


def _run_all(todo: list, cfg: RunConfig, run_dir: Path, fingerprint: dict, ctx: RunContext,
             isolated: tuple[Isolation | None, Workers | None], several_seeds: bool, writer: bool) -> int:
    """Each (seed, variant) in turn; a failure is recorded and the next one runs."""
    failures = 0
    for seed, variant in tqdm(todo, desc="variants", unit="variant", disable=not (cfg.progress and writer)):
        seed_cfg = replace(cfg, seed=seed)
        run_keys = {"seed": seed, "world_size": cfg.world_size}
        started_at = timestamp()
        try:
            result = _measure(variant, seed_cfg, ctx, *isolated)
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
                          seed if several_seeds else None)
    return failures


def _ahead(todo: list, cfg: RunConfig, isolation: Isolation) -> int:
    """How many workers to start ahead of their variant: on a GPU host each one-process job's, its
    imports on a core the running variant does not use; none on the CPU, where they would share
    the cores of the variant being timed, nor for torchrun groups."""
    return len(todo) if isolation.nproc == 1 and cfg.device.type == "cuda" else 0


def _measure(variant: Variant, cfg: RunConfig, ctx: RunContext, isolation: Isolation | None,
             workers: Workers | None) -> VariantResult:
    """The variant measured in a fresh worker (with `isolation`) or here, its NVML columns cut
    from this process's timeline at the phase windows it handed back."""
    if isolation is None:
        result = measure(variant, cfg, ctx)
    else:
        worker_ctx = RunContext(reference_cache=dict(ctx.reference_cache), decoded_dir=ctx.decoded_dir)
        result = workers.run(isolation.target, variant, cfg, worker_ctx, timeout_s=isolation.timeout_s,
                             nproc=isolation.nproc)
        if result.reference:  # the plain loop's rounds: later workers with the same model settings reuse them
            ctx.reference_cache.setdefault(reference_key(variant), result.reference)
    if ctx.sampler is not None and result.phases is not None:
        for at, label in result.phases.marks:
            ctx.sampler.mark(label, at=at)
    result.row.update(nvml_columns(result.phases, cfg, ctx))
    return result


def nvml_columns(run, cfg: RunConfig, ctx: RunContext) -> dict:
    """Energy and utilisation of steady training steps: the energy window (the last epochs back to
    back) where the variant trained one (its length is energy_window_s), else the timed steady steps of
    the epochs; with the compile (warm-up steps), validation and whole-phase energy beside them,
    and the energy to the target from the start. `run` is the Phases a variant's measurement
    handed back."""
    from bench.instruments.nvml import nvml_unavailable_reason, phase_energies, summarize_windows
    if ctx.sampler is None:
        return {"nvml_note": ctx.nvml_reason or nvml_unavailable_reason(cfg.device) or "NVML sampler not running"}
    timeline, period = ctx.sampler.timeline(), ctx.sampler.counter_period_s
    if run.energy_window is not None:
        windows, steps = [run.energy_window], run.energy_steps
    else:
        windows, steps = run.steady_windows, max(run.steps - cfg.warmup_steps, 0)
    columns = summarize_windows(timeline, windows, ctx.idle_power_w, steps * run.batch_size, period)  # each rank's samples
    columns["energy_window_s"] = run.energy_window[1] - run.energy_window[0] if run.energy_window else math.nan
    phases = {"compile_energy_j": [run.warmup_window] if run.warmup_window else [], "val_energy_j": run.eval_windows,
              "phase_energy_j": [(run.t_start, run.t_end)]}
    if not math.isnan(run.time_to_target):
        phases["j_to_target"] = [(run.t_start, run.t_start + run.time_to_target)]
    columns.update(phase_energies(timeline, phases, period))
    return columns


@contextlib.contextmanager
def _decoded_splits(cfg: RunConfig, ctx: RunContext):
    """The resident loader's splits decoded once, here, into .npy files that every worker maps
    (ctx.decoded_dir) instead of decoding the PNGs again; removed when the run ends."""
    from loaders.dataset import decode_split
    from loaders.resident import save_decoded
    with tempfile.TemporaryDirectory(prefix="bench-decoded-") as folder:
        for split, ids in (("train", cfg.train_ids), ("val", cfg.val_ids)):
            save_decoded(decode_split(cfg.data_root, ids, progress=cfg.progress), Path(folder) / split)
        ctx.decoded_dir = folder
        try:
            yield
        finally:
            ctx.decoded_dir = None


def summary_line(row: dict, seed: int | None = None) -> str:
    """One console line per finished variant; a throughput too short to time reads n/a, not nan."""
    speed = row["train_samples_per_s"]
    speed = f"{speed:,.0f}" if math.isfinite(speed) else "n/a (no timed steps past the warm-up)"
    return (f"{row['variant']}{f' seed {seed}' if seed is not None else ''}: accuracy {row['accuracy']:.2f}%  "
            f"val_loss {row['val_loss']:.4f}  {speed} train samples/s  {row['sec_per_epoch']:.2f} s/epoch")


def _write_result(result, run_dir: Path, fingerprint: dict, ctx: RunContext, seed: int | None) -> None:
    append_rows(run_dir / CURVES, result.curves, CURVE_COLUMNS)
    append_rows(run_dir / INFERENCE, result.inference, INFERENCE_COLUMNS)
    write_steps(run_dir, result.steps)
    if result.robustness:
        append_rows(run_dir / ROBUSTNESS, result.robustness, ROBUSTNESS_COLUMNS)
    append_rows(run_dir / RESULTS, [{**result.row, **fingerprint}], RESULT_COLUMNS)
    tqdm.write(summary_line(result.row, seed))
    if ctx.sampler is not None:
        ctx.sampler.to_csv(run_dir / NVML_FILE)


def write_steps(run_dir: Path, steps: list[dict]) -> None:
    """steps.csv: the worker's per-step times, before the results row (like curves.csv)."""
    append_rows(run_dir / STEPS, steps, STEP_COLUMNS)


def _free_memory(cfg: RunConfig) -> None:
    if cfg.device.type == "cuda":
        torch.cuda.empty_cache()

"""The run directory's tables: fixed CSV schemas, appended one row at a time.

Rows are appended and flushed as each variant finishes, so an interrupted run keeps everything
it completed; readers keep the last row per variant, so a resumed run can re-run a failure.
A row is one line written whole with its newline: a file that does not end in a newline was
cut mid-row (a crash, a full disk), and its torn last line is dropped with a warning when read
and cut off before the next append, so the variant counts as not done and --resume re-runs it.
"""

import csv
import io
import json
import math
import os
import warnings
from pathlib import Path

import pandas as pd

SETTINGS = ["variant", "arch", "downsample", "precision", "compile_mode", "memory_format", "batch_size", "loader", "channels"]
FINGERPRINT = ["hardware", "device", "gpu_name", "driver", "cuda", "torch", "dali", "python", "cpu_model"]
RESULT_COLUMNS = SETTINGS + [
    "seed", "world_size", "status", "error", "epochs", "repeats", "train_samples", "val_samples", "loader_form", "optimizer", "params",
    "params_stored",
    "val_loss", "accuracy", "sec_per_epoch", "first_epoch_s",
    "train_samples_per_s", "train_samples_per_s_std",
    "reference_samples_per_s", "reference_rounds", "harness_efficiency", "harness_efficiency_ci95_low",
    "harness_efficiency_ci95_high", "harness_efficiency_resolved", "step_ms_p50", "step_ms_p90", "step_ms_p99",
    "data_wait_ms_mean", "compute_ms_mean", "data_wait_share", "infer_samples_per_s", "infer_ms_p50",
    "compile_s", "compiled_graphs", "graph_breaks", "recompiles_timed", "suspect",
    "target_acc", "time_to_target_s", "final_train_loss",
    "peak_mem_kind", "peak_mem_mb", "peak_reserved_mb", "flops_per_sample", "mfu",
    "nvml_note", "nvml_samples", "gpu_util_mean", "gpu_util_max", "mem_util_mean", "power_w_mean", "power_w_max",
    "sm_clock_mhz_mean", "temp_c_max", "nvml_mem_peak_mb", "energy_j", "energy_source",
    "energy_above_idle_j", "samples_per_j", "compile_energy_j", "val_energy_j", "phase_energy_j", "j_to_target",
    "throttled_share", "throttled",
    "samples_trained", "kernels", "note",
] + FINGERPRINT
CURVE_COLUMNS = ["variant", "seed", "repeat", "epoch", "train_loss", "val_loss", "accuracy", "lr", "epoch_s", "eval_s",
                 "train_samples_per_s", "elapsed_s"]
INFERENCE_COLUMNS = ["variant", "seed", "batch_size", "samples_per_s", "ms_p50", "ms_p90", "ms_p99"]
LOADER_COLUMNS = ["loader", "form", "batch_size", "workers", "device", "epochs", "samples", "samples_per_s",
                  "batch_ms_p50", "batch_ms_p99", "first_epoch_s", "host_peak_rss_mb", "torch_device_peak_mb",
                  "ratio_to_torch", "status", "error"]

# The run directory's format; env.json carries it as "schema_version" (no key = version 1, the
# format before it was recorded). Bump it when a column changes meaning or goes away, and list in
# READABLE_VERSIONS the older ones readers still understand. Version 2: energy columns cover the
# steady steps only (the whole phase is phase_energy_j) and env.json records the run's settings.
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)

RESULTS, CURVES, INFERENCE, LOADERS_CSV, ENV = "results.csv", "curves.csv", "inference.csv", "loaders.csv", "env.json"


def _cell(value):
    """A CSV cell: NaN and None empty, text on one line (a row is exactly one line of the file)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str):
        return " ".join(value.splitlines())
    return value


def _complete_bytes(data: bytes, path: Path) -> bytes:
    """`data` up to its last newline; a torn last line is dropped with a warning naming the file."""
    end = data.rfind(b"\n") + 1
    if end < len(data):
        warnings.warn(f"{path}: dropped a torn last line ({len(data) - end} bytes, a row cut off by a crash); "
                      "its variant counts as not done", stacklevel=3)
    return data[:end]


def append_rows(path: str | Path, rows: list[dict], columns: list[str]) -> None:
    """Appends rows (header first if the file is new) in one write, then flushes them to disk;
    a torn last line is cut off first so the new rows never join it. A key outside the schema is a bug."""
    path = Path(path)
    for row in rows:
        unknown = set(row) - set(columns)
        if unknown:
            raise KeyError(f"{path.name}: columns {sorted(unknown)} are not in the schema")
    size = path.stat().st_size if path.exists() else 0
    complete = size
    if size:
        with path.open("rb") as f:
            f.seek(size - 1)
            if f.read(1) != b"\n":  # torn: only then is the whole file read
                complete = len(_complete_bytes(path.read_bytes(), path))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    if complete == 0:
        writer.writeheader()
    writer.writerows({k: _cell(row.get(k)) for k in columns} for row in rows)
    with path.open("r+b" if size else "wb") as f:
        f.truncate(complete)
        f.seek(complete)
        f.write(text.getvalue().encode())
        f.flush()
        os.fsync(f.fileno())


RUN_KEYS = ("seed", "world_size")  # with the variant, what makes a results row one training run


def read_table(path: str | Path, key: str | None = "variant") -> pd.DataFrame:
    """A run table without a torn last line; with a key, the last row of each key wins (a
    resumed run re-ran it). The variant key also takes the seed and world size where the table
    has them (run folders from before --seeds have neither: one row per variant)."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame()
    data = _complete_bytes(path.read_bytes(), path)
    if data.count(b"\n") < 2:  # no row (or not even a whole header)
        header = data.decode().strip()
        return pd.DataFrame(columns=header.split(",") if header else None)
    table = pd.read_csv(io.BytesIO(data))
    if key and key in table:
        keys = [key] + [k for k in RUN_KEYS if key == "variant" and k in table]
        table = table.drop_duplicates(keys, keep="last").reset_index(drop=True)
    return table


def done_variants(run_dir: str | Path) -> set[str]:
    """Variants that finished with status ok; --resume skips them."""
    table = read_table(Path(run_dir) / RESULTS)
    if table.empty or "status" not in table:
        return set()
    return set(table.loc[table["status"] == "ok", "variant"])


def done_runs(run_dir: str | Path, default_seed: int) -> set[tuple[str, int, int]]:
    """(variant, seed, world_size) of the runs that finished with status ok; --resume skips them.
    A row without a seed (a run folder from before --seeds) trained with `default_seed` (--seed)
    on one process."""
    table = read_table(Path(run_dir) / RESULTS)
    if table.empty or "status" not in table:
        return set()
    ok = table[table["status"] == "ok"]
    seeds = ok["seed"].fillna(default_seed) if "seed" in ok else pd.Series(default_seed, index=ok.index)
    worlds = ok["world_size"].fillna(1) if "world_size" in ok else pd.Series(1, index=ok.index)
    return set(zip(ok["variant"], seeds.astype(int), worlds.astype(int)))


def write_env(run_dir: str | Path, env: dict) -> None:
    (Path(run_dir) / ENV).write_text(json.dumps(env, indent=2))


def read_env(run_dir: str | Path) -> dict:
    path = Path(run_dir) / ENV
    return json.loads(path.read_text()) if path.exists() else {}

"""The run directory's tables: fixed CSV schemas, appended one row at a time.

Rows are appended and flushed as each variant finishes, so an interrupted run keeps everything
it completed; readers keep the last row per variant, so a resumed run can re-run a failure.
"""

import csv
import json
import math
from pathlib import Path

import pandas as pd

SETTINGS = ["variant", "arch", "downsample", "precision", "compile_mode", "memory_format", "batch_size", "loader"]
FINGERPRINT = ["hardware", "device", "gpu_name", "driver", "cuda", "torch", "dali", "python", "cpu_model"]
RESULT_COLUMNS = SETTINGS + [
    "status", "error", "epochs", "repeats", "train_samples", "val_samples", "loader_form", "optimizer", "params",
    "val_loss", "accuracy", "sec_per_epoch", "first_epoch_s",
    "train_samples_per_s", "train_samples_per_s_std",
    "reference_samples_per_s", "harness_efficiency", "step_ms_p50", "step_ms_p90", "step_ms_p99",
    "data_wait_ms_mean", "compute_ms_mean", "data_wait_share", "infer_samples_per_s", "infer_ms_p50",
    "compile_s", "compiled_graphs", "graph_breaks", "recompiles_timed", "suspect",
    "target_acc", "time_to_target_s", "final_train_loss",
    "peak_mem_kind", "peak_mem_mb", "peak_reserved_mb", "flops_per_sample", "mfu",
    "nvml_note", "nvml_samples", "gpu_util_mean", "gpu_util_max", "mem_util_mean", "power_w_mean", "power_w_max",
    "sm_clock_mhz_mean", "temp_c_max", "nvml_mem_peak_mb", "energy_j", "energy_source",
    "energy_above_idle_j", "samples_per_j", "compile_energy_j", "val_energy_j", "phase_energy_j", "j_to_target",
    "throttled_share", "throttled",
    "samples_trained",
] + FINGERPRINT
CURVE_COLUMNS = ["variant", "repeat", "epoch", "train_loss", "val_loss", "accuracy", "lr", "epoch_s", "eval_s",
                 "train_samples_per_s", "elapsed_s"]
INFERENCE_COLUMNS = ["variant", "batch_size", "samples_per_s", "ms_p50", "ms_p90", "ms_p99"]
LOADER_COLUMNS = ["loader", "form", "batch_size", "workers", "device", "epochs", "samples", "samples_per_s",
                  "batch_ms_p50", "batch_ms_p99", "first_epoch_s", "host_peak_rss_mb", "torch_device_peak_mb",
                  "ratio_to_torch", "status", "error"]

RESULTS, CURVES, INFERENCE, LOADERS, ENV = "results.csv", "curves.csv", "inference.csv", "loaders.csv", "env.json"


def _cell(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def append_rows(path: str | Path, rows: list[dict], columns: list[str]) -> None:
    """Appends rows (header first if the file is new); a key outside the schema is a bug."""
    path = Path(path)
    for row in rows:
        unknown = set(row) - set(columns)
        if unknown:
            raise KeyError(f"{path.name}: columns {sorted(unknown)} are not in the schema")
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        if new:
            writer.writeheader()
        writer.writerows({k: _cell(row.get(k)) for k in columns} for row in rows)
        f.flush()


def read_table(path: str | Path, key: str | None = "variant") -> pd.DataFrame:
    """A run table; with a key, the last row of each key wins (a resumed run re-ran it)."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame()
    table = pd.read_csv(path)
    if key and key in table:
        table = table.drop_duplicates(key, keep="last").reset_index(drop=True)
    return table


def done_variants(run_dir: str | Path) -> set[str]:
    """Variants that finished with status ok; --resume skips them."""
    table = read_table(Path(run_dir) / RESULTS)
    if table.empty:
        return set()
    return set(table.loc[table["status"] == "ok", "variant"])


def write_env(run_dir: str | Path, env: dict) -> None:
    (Path(run_dir) / ENV).write_text(json.dumps(env, indent=2))


def read_env(run_dir: str | Path) -> dict:
    path = Path(run_dir) / ENV
    return json.loads(path.read_text()) if path.exists() else {}

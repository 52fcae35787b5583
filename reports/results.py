"""The run directory's files: fixed CSV schemas, env.json and plan.json, each written atomically.

Rows are added as each variant finishes, so an interrupted run keeps everything it completed;
readers keep the last row per variant, so a resumed run can re-run a failure. Every file is
replaced whole (a temporary file beside it, flushed to disk, renamed over it), so a full disk or
a kill leaves the last good version, never a cut one. A row is one line of the file, and every
row is checked when read (its field count, its numbers, its status): a row that fails is
dropped with a warning naming the file and line, so its variant counts as not done and
--resume runs it again.
"""

import contextlib
import csv
import fcntl
import io
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass
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
    "peak_mem_kind", "peak_mem_mb", "peak_reserved_mb", "peak_mem_excludes",
    "flops_per_sample", "flops_per_sample_stored", "mfu_per_gpu",
    "nvml_note", "nvml_gpus", "nvml_samples", "gpu_util_mean", "gpu_util_max", "mem_util_mean", "power_w_mean",
    "power_w_max", "sm_clock_mhz_mean", "temp_c_max", "nvml_mem_peak_mb", "energy_j", "energy_j_pm", "energy_resolved",
    "energy_window_s", "energy_source", "energy_above_idle_j", "samples_per_j", "compile_energy_j", "compile_energy_j_pm",
    "val_energy_j", "val_energy_j_pm", "phase_energy_j", "phase_energy_j_pm", "j_to_target", "j_to_target_pm",
    "throttled_share", "throttled",
    "samples_trained", "kernels", "note",
    "started_at", "finished_at", "code_version", "session",  # when and by which process and code the row was made
] + FINGERPRINT
CURVE_COLUMNS = ["variant", "seed", "repeat", "epoch", "train_loss", "val_loss", "accuracy", "lr", "epoch_s", "eval_s",
                 "train_samples_per_s", "elapsed_s"]
STEP_COLUMNS = ["variant", "seed", "world_size", "repeat", "epoch", "step", "data_ms", "compute_ms"]  # timed steps
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
STEPS = "steps.csv"


RUN_KEYS = ("seed", "world_size")  # with the variant, what makes a results row one training run
PLAN, LOCK = "plan.json", "run.lock"
STATUSES = ("ok", "failed")


class RunDirError(ValueError):
    """A run-directory file that cannot be read or written: one line naming it (bench exits 2)."""


class TableWarning(UserWarning):
    """A row of a run table that cannot be trusted: dropped when read."""


@dataclass(frozen=True)
class Schema:
    """What a table's rows must hold: `required` columns (a header without them is another
    file's) and `numeric` columns whose non-empty cells must parse as numbers."""
    required: tuple[str, ...]
    numeric: frozenset[str]


SCHEMAS = {
    RESULTS: Schema(("variant", "status"), frozenset({
        "batch_size", "seed", "world_size", "epochs", "repeats", "train_samples", "val_samples", "params",
        "val_loss", "accuracy", "sec_per_epoch", "first_epoch_s", "train_samples_per_s", "train_samples_per_s_std",
        "step_ms_p50", "step_ms_p90", "step_ms_p99", "compile_s", "target_acc", "time_to_target_s",
        "peak_mem_mb", "energy_j", "samples_per_j"})),
    CURVES: Schema(("variant", "epoch"), frozenset({"seed", "repeat", "epoch", "train_loss", "val_loss", "accuracy",
                                                    "epoch_s", "train_samples_per_s"})),
    INFERENCE: Schema(("variant", "batch_size"), frozenset({"seed", "batch_size", "samples_per_s", "ms_p50"})),
    LOADERS_CSV: Schema(("loader", "status"), frozenset({"batch_size", "samples", "samples_per_s"})),
}


def write_atomically(path: str | Path, data: str | bytes) -> Path:
    """Replaces `path` whole or not at all: a temporary file in the same folder, flushed to disk,
    renamed over it. A full disk or a read-only folder is a RunDirError naming the file."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # hidden; same folder, so the rename is atomic
    try:
        with temporary.open("wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
        folder = os.open(path.parent, os.O_RDONLY)  # the rename itself reaches the disk
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise RunDirError(f"cannot write {path}: {error.strerror or error}") from None
    return path


def write_png(fig, path: str | Path) -> Path:
    """A matplotlib figure as a PNG, rendered in memory and written atomically: a full disk
    leaves the previous plot (or none), never a 0-byte one."""
    path = Path(path)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunDirError(f"cannot write {path}: {error.strerror or error}") from None
    return write_atomically(path, png.getvalue())


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise RunDirError(f"cannot read {path}: {error.strerror or error}") from None


def _cell(value):
    """A CSV cell: NaN and None empty, text on one line (a row is exactly one line of the file)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str):
        return " ".join(value.splitlines())
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _row_problem(fields: list[str], header: list[str], schema: Schema | None) -> str | None:
    """Why a row cannot be trusted, or None: a field count other than the header's (a row cut
    or joined), text in a numeric column, a status other than ok or failed."""
    if len(fields) != len(header):
        return f"{len(fields)} fields where the header has {len(header)} (a cut or damaged row)"
    cells = dict(zip(header, fields))
    for column in header:
        if schema and column in schema.numeric and cells[column] and not _is_number(cells[column]):
            return f"{column} is {cells[column]!r}, not a number"
    if schema and "status" in schema.required and cells["status"] not in STATUSES:
        return f"status {cells['status']!r} is not one of {', '.join(STATUSES)}"
    return None


def _checked_lines(path: Path, data: bytes) -> tuple[str, list[str]]:
    """(header line, the rows that pass every check), each line with its newline. A header
    without the schema's required columns is a RunDirError; a bad row a TableWarning naming its
    line (numbered from 1, the header), then dropped."""
    lines = data.decode("utf-8", errors="replace").split("\n")
    torn = lines.pop()  # the text after the last newline: empty unless the file was cut mid-line
    if not lines:
        if torn:
            warnings.warn(f"{path}: dropped a torn last line ({len(torn)} bytes, the header cut off)", TableWarning,
                          stacklevel=3)
        return "", []
    header = next(csv.reader([lines[0]]))
    schema = SCHEMAS.get(path.name)
    missing = [c for c in (schema.required if schema else ()) if c not in header]
    if missing:
        raise RunDirError(f"{path}: not a fusionbench {path.name} (its header has no column {', '.join(missing)})")
    after = " (its variant counts as not done: --resume runs it again)" if path.name == RESULTS else ""
    good = []
    for number, line in enumerate(lines[1:], start=2):
        problem = _row_problem(next(csv.reader([line]), []), header, schema)
        if problem:
            warnings.warn(f"{path} line {number}: {problem}; row dropped{after}", TableWarning, stacklevel=3)
        else:
            good.append(line + "\n")
    if torn:
        warnings.warn(f"{path} line {len(lines) + 1}: dropped a torn last line ({len(torn.encode())} bytes, a row "
                      f"cut off by a crash){after}", TableWarning, stacklevel=3)
    return lines[0] + "\n", good


@contextlib.contextmanager
def table_warnings_as_lines():
    """Within it, each dropped row is printed once to stderr as `warning: FILE line N: ...` (not
    Python's warning format with a source line; several readers meet the same row)."""
    seen = set()

    def show(message, category, *args, **kwargs):
        if str(message) not in seen:
            seen.add(str(message))
            print(f"warning: {message}", file=sys.stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("always", TableWarning)
        warnings.showwarning = show
        yield


def _rows_text(rows: list[dict], columns: list[str], header: bool) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows({k: _cell(row.get(k)) for k in columns} for row in rows)
    return text.getvalue()


def append_rows(path: str | Path, rows: list[dict], columns: list[str]) -> None:
    """Adds rows (header first if the file is new) by rewriting the file atomically: the rows
    already there that pass the checks, then the new ones. A key outside the schema is a bug."""
    path = Path(path)
    for row in rows:
        unknown = set(row) - set(columns)
        if unknown:
            raise KeyError(f"{path.name}: columns {sorted(unknown)} are not in the schema")
    header, kept = _checked_lines(path, _read_bytes(path)) if path.exists() else ("", [])
    if header and next(csv.reader([header])) != columns:
        raise RunDirError(f"{path}: its columns are not this fusionbench's {path.name} columns "
                          "(written by another version?); write to a new --out")
    write_atomically(path, header + "".join(kept) + _rows_text(rows, columns, header=not header))


def write_rows(path: str | Path, rows: list[dict], columns: list[str]) -> None:
    """Replaces the table at `path` with these rows, atomically."""
    write_atomically(path, _rows_text(rows, columns, header=True))


def read_table(path: str | Path, key: str | None = "variant") -> pd.DataFrame:
    """A run table of the rows that pass the checks; with a key, the last row of each key wins
    (a resumed run re-ran it). The variant key also takes the seed and world size where the
    table has them (run folders from before --seeds have neither: one row per variant)."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame()
    header, rows = _checked_lines(path, _read_bytes(path))
    if not rows:
        columns = next(csv.reader([header])) if header.strip() else None
        return pd.DataFrame(columns=columns)
    table = pd.read_csv(io.StringIO(header + "".join(rows)))
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
    write_atomically(Path(run_dir) / ENV, json.dumps(env, indent=2))


def read_json_object(path: Path) -> dict | None:
    """The JSON object in `path` (None when there is no file); anything else is a RunDirError naming it."""
    if not path.exists():
        return None
    try:
        value = json.loads(_read_bytes(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunDirError(f"{path}: not valid JSON ({error}); the file is damaged") from None
    if not isinstance(value, dict):
        raise RunDirError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def read_env(run_dir: str | Path) -> dict:
    """env.json as a dict ({} when there is none); damaged or not an object: a RunDirError."""
    return read_json_object(Path(run_dir) / ENV) or {}


def write_plan(run_dir: str | Path, runs: list[dict]) -> None:
    """plan.json: the (variant, seed, world_size) runs the run set out to make, so a report can
    name the ones without a row. A resume adds its own to those already planned."""
    planned = read_plan(run_dir)
    planned += [run for run in runs if run not in planned]
    write_atomically(Path(run_dir) / PLAN, json.dumps({"runs": planned}, indent=1))


def read_plan(run_dir: str | Path) -> list[dict]:
    """The planned runs ([] for a run folder from before plans were recorded)."""
    path = Path(run_dir) / PLAN
    runs = (read_json_object(path) or {}).get("runs", [])
    if not isinstance(runs, list) or not all(isinstance(r, dict) and "variant" in r for r in runs):
        raise RunDirError(f"{path}: expected {{\"runs\": [{{\"variant\": ..., \"seed\": ..., \"world_size\": ...}}]}}")
    return runs


def lock_holder(run_dir: str | Path) -> str | None:
    """Who holds run_dir/run.lock ("pid N on host"), None when no other process does: a report
    written while another process still runs says so instead of calling the run interrupted."""
    path = Path(run_dir) / LOCK
    try:
        handle = path.open("r")
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = handle.read().strip() or "another process"
            return None if holder.startswith(f"pid {os.getpid()} ") else holder
        return None

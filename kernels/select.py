"""Whether a Triton kernel is used: only where `python -m bench kernels` measured it beating both the
eager and the torch.compile reference on this GPU model, in every case it timed that the caller
runs (its dtype, layout and channel widths; every batch size timed). Everything else (a CPU, no
table, another GPU, a case nobody timed, a single case lost) keeps the torch path."""

from pathlib import Path

import pandas as pd
import torch

KERNELS = ("input_prep", "relu_maxpool")  # the kernels `bench kernels` times and `bench all --kernels` may use
# channels: the input's channel width, for kernels whose cost depends on it (relu_maxpool); empty otherwise
COLUMNS = ["kernel", "case", "dtype", "layout", "channels", "batch_size", "device_name", "kernel_ms", "eager_ms",
           "compiled_ms", "speedup_vs_eager", "speedup_vs_compiled", "wins"]


def winners(table: pd.DataFrame, device_name: str) -> set[str]:
    """Kernels whose every row for `device_name` beats both references."""
    rows = table[table["device_name"] == device_name]
    return {kernel for kernel, group in rows.groupby("kernel") if group["wins"].astype(bool).all()}


def read_results(results: str | Path) -> pd.DataFrame:
    """A kernels.csv of `bench kernels` (or the folder holding it), its columns checked."""
    path = Path(results)
    if path.is_dir():
        path = path / "kernels.csv"
    if not path.is_file():
        raise ValueError(f"kernel results {path} not found (write them with python -m bench kernels --out DIR)")
    table = pd.read_csv(path)
    missing = set(COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"{path} lacks columns {', '.join(sorted(missing))} (expected a kernels.csv of bench kernels; "
                         "rerun python -m bench kernels)")
    return table


def measured_winning(table: pd.DataFrame, kernel: str, device_name: str, dtype: str | None = None,
                     layout: str | None = None, channels: tuple[int, ...] = ()) -> bool:
    """True when `table` timed `kernel` on `device_name` for the dtype and layout (None: every one
    timed) and for each of the channel widths, and it beat both references in all those rows."""
    rows = table[(table["kernel"] == kernel) & (table["device_name"] == device_name)]
    if dtype is not None:
        rows = rows[rows["dtype"] == dtype]
    if layout is not None:
        rows = rows[rows["layout"] == layout]
    if channels:
        rows = rows[rows["channels"].isin(channels)]
        if not set(channels) <= set(rows["channels"].astype(int)):
            return False  # a width nobody timed
    return len(rows) > 0 and bool(rows["wins"].astype(bool).all())


def use_kernel(kernel: str, device: torch.device, results: str | Path | None, dtype: str | None = None,
               layout: str | None = None, channels: tuple[int, ...] = ()) -> bool:
    """True when `results` (a kernels.csv) shows `kernel` winning on the GPU model of `device` in
    every case of the caller's dtype, layout and channel widths (see measured_winning)."""
    if device.type != "cuda" or results is None:
        return False
    return measured_winning(read_results(results), kernel, torch.cuda.get_device_name(device), dtype, layout, channels)

"""Whether a Triton kernel is used: only where `python -m bench kernels` measured it beating both the
eager and the torch.compile reference on this GPU model, in every case it timed. Everything else
(a CPU, no table, another GPU, a single case lost) keeps the torch path."""

from pathlib import Path

import pandas as pd
import torch

KERNELS = ("input_prep", "relu_maxpool")  # the kernels `bench kernels` times and `bench all --kernels` may use
COLUMNS = ["kernel", "case", "dtype", "layout", "batch_size", "device_name", "kernel_ms", "eager_ms",
           "compiled_ms", "speedup_vs_eager", "speedup_vs_compiled", "wins"]


def winners(table: pd.DataFrame, device_name: str) -> set[str]:
    """Kernels whose every row for `device_name` beats both references."""
    rows = table[table["device_name"] == device_name]
    return {kernel for kernel, group in rows.groupby("kernel") if group["wins"].astype(bool).all()}


def use_kernel(kernel: str, device: torch.device, results: str | Path | None) -> bool:
    """True when `results` (a kernels.csv) shows `kernel` winning on the GPU model of `device`."""
    if device.type != "cuda" or results is None:
        return False
    path = Path(results)
    if path.is_dir():
        path = path / "kernels.csv"
    if not path.is_file():
        raise ValueError(f"kernel results {path} not found (write them with python -m bench kernels --out DIR)")
    table = pd.read_csv(path)
    missing = set(COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"{path} lacks columns {', '.join(sorted(missing))} (expected a kernels.csv of bench kernels)")
    return kernel in winners(table, torch.cuda.get_device_name(device))

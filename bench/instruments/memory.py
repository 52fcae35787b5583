"""Peak memory per variant: CUDA allocator peaks on a GPU, the process's peak RSS on a CPU.

The two are different quantities, so every row says which one it holds (peak_mem_kind).
"""

from pathlib import Path

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def reset_host_peak() -> None:
    """Linux: writing 5 to clear_refs resets this process's peak RSS (VmHWM) to its current RSS."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        pass


def host_peak_mb() -> float | None:
    if not _STATUS.exists():
        return None
    for line in _STATUS.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()  # else the peak reserved starts at the blocks earlier variants left
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_host_peak()


def read_peak(device: torch.device) -> dict:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return {
            "peak_mem_kind": "cuda_max_allocated",
            "peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20,
            "peak_reserved_mb": torch.cuda.max_memory_reserved(device) / 2**20,
        }
    return {"peak_mem_kind": "process_peak_rss", "peak_mem_mb": host_peak_mb(), "peak_reserved_mb": None}

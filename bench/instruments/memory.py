"""Peak memory per variant: CUDA allocator peaks on a GPU, the process's peak RSS on a CPU.

The two are different quantities, so every row says which one it holds (peak_mem_kind), and
what its figure leaves out (peak_mem_excludes: memory that torch's allocator never sees).
"""

import gc
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
    """Start a variant's peaks from what it holds itself. On CUDA the peaks reset to what the
    caching allocator holds now, so the blocks earlier variants in this process left cached are
    released first: else they would count in this variant's reserved peak."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        gc.collect()  # earlier variants' models and optimisers may sit in reference cycles
        torch.cuda.empty_cache()
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


def excluded(device: torch.device, loader: str) -> str:
    """What the CUDA peaks of a variant leave out: DALI allocates its device buffers from its own
    pool, which torch.cuda.max_memory_allocated never sees (NVML's device memory used does)."""
    return "DALI's device memory pool" if device.type == "cuda" and loader == "dali" else ""

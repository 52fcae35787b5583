"""Peak memory per variant: CUDA allocator peaks on a GPU, the process's peak RSS on a CPU.

The two are different quantities, so every row says which one it holds (peak_mem_kind), and
what its figure leaves out (peak_mem_excludes: memory that torch's allocator never sees).
"""

import gc
from pathlib import Path

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


RESET_SLACK_MB = 1.0  # a peak within this of the current RSS starts from now, whether or not the kernel reset it


def _status_mb() -> dict[str, float]:
    """The kB fields of /proc/self/status (VmHWM, VmRSS, ...) in MiB, from one read; {} off Linux."""
    if not _STATUS.exists():
        return {}
    fields = (line.split() for line in _STATUS.read_text().splitlines())
    return {f[0].rstrip(":"): int(f[1]) / 1024 for f in fields if len(f) == 3 and f[2] == "kB"}


def host_peak_mb() -> float | None:
    return _status_mb().get("VmHWM")


def reset_host_peak() -> bool:
    """Linux: writing 5 to clear_refs resets this process's peak RSS (VmHWM) to its current RSS.
    Some kernels and sandboxes refuse the write or ignore it, so the reset is read back: False
    when the peak still holds more than RESET_SLACK_MB over the current RSS (an earlier peak)."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        pass
    status = _status_mb()  # both from one read: the RSS may move between two
    return "VmHWM" in status and "VmRSS" in status and status["VmHWM"] - status["VmRSS"] <= RESET_SLACK_MB


def reset_peak(device: torch.device) -> bool:
    """Start a variant's peaks from what it holds itself; False where the host peak could not be
    reset (read_peak then names its figure a peak since the process started). On CUDA the peaks
    reset to what the caching allocator holds now, so the blocks earlier variants in this process
    left cached are released first: else they would count in this variant's reserved peak."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        gc.collect()  # earlier variants' models and optimisers may sit in reference cycles
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return True
    return reset_host_peak()


def read_peak(device: torch.device, was_reset: bool = True) -> dict:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return {
            "peak_mem_kind": "cuda_max_allocated",
            "peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20,
            "peak_reserved_mb": torch.cuda.max_memory_reserved(device) / 2**20,
        }
    kind = "process_peak_rss" if was_reset else "process_peak_rss_since_start"
    return {"peak_mem_kind": kind, "peak_mem_mb": host_peak_mb(), "peak_reserved_mb": None}


def excluded(device: torch.device, loader: str) -> str:
    """What the CUDA peaks of a variant leave out: DALI allocates its device buffers from its own
    pool, which torch.cuda.max_memory_allocated never sees (NVML's device memory used does)."""
    return "DALI's device memory pool" if device.type == "cuda" and loader == "dali" else ""

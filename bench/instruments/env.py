"""Hardware and software fingerprint of a run, and the short key that names its results.

Every result row carries this fingerprint so runs from different machines are compared
safely. Anything that cannot be found is "" (never an error): a fingerprint must not be the
reason a benchmark on an odd machine fails.
"""

import importlib
import os
import platform
import re

import pynvml
import torch

_HARDWARE_KEY_MAX = 48


def _module_version(name: str) -> str:
    """__version__ of an importable module, "" when it is missing or fails to import."""
    try:
        return str(importlib.import_module(name).__version__)
    except Exception:
        return ""


def _driver_version() -> str:
    """The NVIDIA driver version from NVML, "" without NVML."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return ""
    try:
        return str(pynvml.nvmlSystemGetDriverVersion())
    except pynvml.NVMLError:
        return ""
    finally:
        pynvml.nvmlShutdown()


def _cudnn_version() -> str:
    """cuDNN version, "" when torch has none or it cannot be loaded (CPU-only machines)."""
    try:
        version = torch.backends.cudnn.version()
    except Exception:
        return ""
    return "" if version is None else str(version)


def _cpu_model() -> str:
    """CPU marketing name from /proc/cpuinfo, else whatever platform knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _memory_gb() -> float | str:
    """Installed RAM in GiB (1 decimal), "" when neither /proc/meminfo nor sysconf says."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)  # value is in kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return ""


def gpu_limits(device: torch.device) -> dict:
    """The GPU's enforced power limit (W) and maximum SM clock (MHz) from NVML: two machines with
    one GPU model but other limits are other hardware for a comparison. {} when NVML cannot say."""
    from bench.instruments.nvml import handle_for
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return {}
    try:
        handle = handle_for(device)
        return {"power_limit_w": pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000,
                "sm_clock_max_mhz": pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM)}
    except pynvml.NVMLError:
        return {}
    finally:
        pynvml.nvmlShutdown()


def collect_env(device: torch.device) -> dict:
    """The fingerprint for a run on `device`. GPU fields are "" when the device is not CUDA.

    Counts are ints and memory_gb a float; every other value is a string.
    """
    device = torch.device(device)
    on_gpu = device.type == "cuda" and torch.cuda.is_available()
    cores = os.cpu_count()
    return {
        "device": str(device),
        "gpu_name": torch.cuda.get_device_name(device) if on_gpu else "",
        "gpu_count": torch.cuda.device_count(),
        "driver": _driver_version() if on_gpu else "",
        "cuda": torch.version.cuda or "",
        "cudnn": _cudnn_version(),
        "torch": torch.__version__,
        "torchvision": _module_version("torchvision"),
        "triton": _module_version("triton"),
        "dali": _module_version("nvidia.dali"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_cores": cores if cores else "",
        "memory_gb": _memory_gb(),
        **(gpu_limits(device) if on_gpu else {}),
    }


def _slug(text: str) -> str:
    """Lowercase [a-z0-9-] with runs of anything else collapsed to one "-"; trademark marks
    like (R) and (TM) are dropped first so they do not leave stray letters."""
    text = re.sub(r"\((r|tm|c)\)", " ", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def hardware_key(env: dict) -> str:
    """Short, stable, filesystem-safe name of the hardware, for results folders and rows:
    the GPU name ("nvidia-h100-80gb-hbm3"), or "cpu-<model>-<cores>c" without a GPU."""
    gpu = _slug(env.get("gpu_name", ""))
    if gpu:
        return gpu[:_HARDWARE_KEY_MAX].rstrip("-")
    cores = env.get("cpu_cores", "")
    suffix = f"-{cores}c" if cores else ""
    model = _slug(env.get("cpu_model", "")) or "unknown"
    room = _HARDWARE_KEY_MAX - len("cpu-") - len(suffix)
    return f"cpu-{model[:room].rstrip('-')}{suffix}"

"""Hardware and software fingerprint of a run, and the short key that names its results.

Every result row carries this fingerprint so runs from different machines are compared
safely. Beside it, env.json records what else changes speed, so a comparison can name the cause
of a difference: thread counts, the environment variables torch, Inductor, NCCL and the BLAS
libraries read, the precision flags, the GPU's clocks, persistence, ECC, MIG and PCIe link, the
CPU frequency governor, and the OS, libc and compiler (torch.utils.collect_env's readers).
Anything that cannot be found is "" or left out (never an error): a fingerprint must not be the
reason a benchmark on an odd machine fails.
"""

import importlib
import os
import platform
import re
from pathlib import Path

import pynvml
import torch

_HARDWARE_KEY_MAX = 48
# Environment variables that change speed: recorded when set (by name, or by prefix)
SPEED_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "KMP_AFFINITY", "KMP_BLOCKTIME",
                   "OMP_PROC_BIND", "OMP_PLACES", "CUDA_VISIBLE_DEVICES", "CUDA_LAUNCH_BLOCKING",
                   "CUDA_DEVICE_MAX_CONNECTIONS", "CUDA_MODULE_LOADING", "CUBLAS_WORKSPACE_CONFIG",
                   "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "PYTORCH_NO_CUDA_MEMORY_CACHING",
                   "LD_PRELOAD", "MALLOC_CONF")
SPEED_PREFIXES = ("TORCHINDUCTOR_", "TORCH_COMPILE_", "TORCHDYNAMO_", "TORCH_CUDNN_", "NCCL_", "TRITON_", "NVIDIA_TF32_")
GOVERNOR = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")


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


def _nvml_query(device: torch.device, query) -> dict:
    """query(handle) of the device's NVML handle between init and shutdown; {} when NVML cannot say."""
    from bench.instruments.nvml import handle_for
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return {}
    try:
        return query(handle_for(device))
    except pynvml.NVMLError:
        return {}
    finally:
        pynvml.nvmlShutdown()


def gpu_limits(device: torch.device) -> dict:
    """The GPU's enforced power limit (W) and maximum SM clock (MHz) from NVML: two machines with
    one GPU model but other limits are other hardware for a comparison. {} when NVML cannot say."""
    return _nvml_query(device, lambda handle: {
        "power_limit_w": pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000,
        "sm_clock_max_mhz": pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM)})


def _nvml_field(read, *args):
    """One NVML query; None when this GPU or driver does not support it."""
    try:
        return read(*args)
    except pynvml.NVMLError:
        return None


def gpu_state(device: torch.device) -> dict:
    """The GPU settings that change speed, from NVML: application and maximum clocks, persistence
    mode, ECC and MIG mode, PCIe link generation and width (current and maximum). A query the GPU
    does not support is left out; {} without NVML."""
    def query(handle) -> dict:
        sm, mem = pynvml.NVML_CLOCK_SM, pynvml.NVML_CLOCK_MEM
        ecc = _nvml_field(pynvml.nvmlDeviceGetEccMode, handle)  # (current, pending)
        mig = _nvml_field(pynvml.nvmlDeviceGetMigMode, handle)
        fields = {
            "sm_clock_app_mhz": _nvml_field(pynvml.nvmlDeviceGetApplicationsClock, handle, sm),
            "mem_clock_app_mhz": _nvml_field(pynvml.nvmlDeviceGetApplicationsClock, handle, mem),
            "mem_clock_max_mhz": _nvml_field(pynvml.nvmlDeviceGetMaxClockInfo, handle, mem),
            "persistence_mode": _nvml_field(pynvml.nvmlDeviceGetPersistenceMode, handle),
            "ecc": ecc[0] if ecc else None,
            "mig": mig[0] if mig else None,
            "pcie_gen": _nvml_field(pynvml.nvmlDeviceGetCurrPcieLinkGeneration, handle),
            "pcie_gen_max": _nvml_field(pynvml.nvmlDeviceGetMaxPcieLinkGeneration, handle),
            "pcie_width": _nvml_field(pynvml.nvmlDeviceGetCurrPcieLinkWidth, handle),
            "pcie_width_max": _nvml_field(pynvml.nvmlDeviceGetMaxPcieLinkWidth, handle),
        }
        return {key: value for key, value in fields.items() if value is not None}
    return _nvml_query(device, query)


def speed_variables(environ=None) -> dict:
    """The set environment variables that change speed (SPEED_VARIABLES, SPEED_PREFIXES)."""
    environ = os.environ if environ is None else environ
    return {name: environ[name] for name in sorted(environ)
            if name in SPEED_VARIABLES or name.startswith(SPEED_PREFIXES)}


def backend_flags() -> dict:
    """cuDNN benchmark/deterministic/TF32 and the float32 matmul precision: each changes which
    kernels run."""
    return {"cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


def _governor() -> str:
    """The CPU frequency governor (performance, powersave, ...), "" where cpufreq is not exposed."""
    try:
        return GOVERNOR.read_text().strip()
    except OSError:
        return ""


def system_info() -> dict:
    """OS, libc, compiler, CUDA runtime and module loading, and the caching allocator's settings:
    the cheap readers of torch.utils.collect_env (its pip listing costs seconds and is left out;
    the packages that matter are in the fingerprint)."""
    from torch.utils import collect_env as torch_env

    def read(reader, *args) -> str:
        try:
            value = reader(*args)
        except Exception:
            return ""
        return "" if value in (None, "N/A") else str(value)

    return {"os": read(torch_env.get_os, torch_env.run), "libc": read(torch_env.get_libc_version),
            "gcc": read(torch_env.get_gcc_version, torch_env.run),
            "cuda_runtime": read(torch_env.get_running_cuda_version, torch_env.run),
            "cuda_module_loading": read(torch_env.get_cuda_module_loading_config),
            "caching_allocator_config": read(torch_env.get_cachingallocator_config) if torch.cuda.is_available() else ""}


def collect_env(device: torch.device) -> dict:
    """The fingerprint for a run on `device`. GPU fields are "" when the device is not CUDA.

    Counts are ints and memory_gb a float; the fingerprint's other values are strings. What else
    changes speed is grouped in dicts: threads, env_vars, backends, gpu_state, system.
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
        "cpu_governor": _governor(),
        **(gpu_limits(device) if on_gpu else {}),
        "threads": {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()},
        "env_vars": speed_variables(),
        "backends": backend_flags(),
        "gpu_state": gpu_state(device) if on_gpu else {},
        "system": system_info(),
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

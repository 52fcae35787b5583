"""Environment fingerprint and the hardware key that names result folders."""

import re

import torch

from bench.instruments.env import collect_env, hardware_key

STRING_KEYS = [
    "device", "gpu_name", "driver", "cuda", "cudnn", "torch", "torchvision", "triton", "dali",
    "python", "platform", "cpu_model",
]


def test_collect_env_on_cpu_has_every_key():
    env = collect_env(torch.device("cpu"))
    assert set(env) == set(STRING_KEYS) | {"gpu_count", "cpu_cores", "memory_gb"}
    for key in STRING_KEYS:
        assert isinstance(env[key], str), key
    assert env["device"] == "cpu"
    assert env["gpu_name"] == "" and env["driver"] == ""
    assert env["torch"] == torch.__version__
    assert isinstance(env["gpu_count"], int)
    assert env["cpu_cores"] == "" or env["cpu_cores"] > 0
    assert env["memory_gb"] == "" or env["memory_gb"] > 0


def test_gpu_key_is_the_slugged_name():
    assert hardware_key({"gpu_name": "NVIDIA H100 80GB HBM3"}) == "nvidia-h100-80gb-hbm3"
    assert hardware_key({"gpu_name": "NVIDIA A100-SXM4-80GB"}) == "nvidia-a100-sxm4-80gb"


def test_cpu_key_has_model_and_cores():
    env = {"gpu_name": "", "cpu_model": "Intel(R) Xeon(R) Platinum 8480+", "cpu_cores": 16}
    assert hardware_key(env) == "cpu-intel-xeon-platinum-8480-16c"


def test_key_with_weird_characters_is_filesystem_safe_and_short():
    env = {
        "gpu_name": "",
        "cpu_model": "  AMD   EPYC™ 7763 64-Core Processor @ 2.45GHz / (TM) ___ " * 3,
        "cpu_cores": 128,
    }
    key = hardware_key(env)
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", key), key
    assert len(key) <= 48
    assert key.startswith("cpu-amd-epyc-7763-64-core") and key.endswith("-128c")
    assert hardware_key(env) == key


def test_unknown_cpu_still_gives_a_key():
    assert hardware_key({"gpu_name": "", "cpu_model": "", "cpu_cores": ""}) == "cpu-unknown"


def test_gpu_limits_read_power_limit_and_max_clock_from_nvml(monkeypatch):
    """CPU test of the NVML path: power limit in W (NVML gives mW) and the maximum SM clock."""
    from bench.instruments import env, nvml
    monkeypatch.setattr(nvml, "handle_for", lambda device: "handle")
    monkeypatch.setattr(env.pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(env.pynvml, "nvmlShutdown", lambda: None)
    monkeypatch.setattr(env.pynvml, "nvmlDeviceGetEnforcedPowerLimit", lambda handle: 700_000)
    monkeypatch.setattr(env.pynvml, "nvmlDeviceGetMaxClockInfo", lambda handle, clock: 1980)
    assert env.gpu_limits(torch.device("cuda", 0)) == {"power_limit_w": 700.0, "sm_clock_max_mhz": 1980}


def test_gpu_limits_are_empty_without_nvml(monkeypatch):
    from bench.instruments import env

    def no_driver():
        raise env.pynvml.NVMLError(env.pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(env.pynvml, "nvmlInit", no_driver)
    assert env.gpu_limits(torch.device("cuda", 0)) == {}

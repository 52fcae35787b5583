"""Environment fingerprint and the hardware key that names result folders."""

import re

import torch

from bench.instruments.env import collect_env, hardware_key

STRING_KEYS = [
    "device", "gpu_name", "driver", "cuda", "cudnn", "torch", "torchvision", "triton", "dali",
    "python", "platform", "cpu_model", "cpu_governor",
]
SECTIONS = {"threads", "env_vars", "backends", "gpu_state", "system"}


def test_collect_env_on_cpu_has_every_key():
    env = collect_env(torch.device("cpu"))
    assert set(env) == set(STRING_KEYS) | {"gpu_count", "cpu_cores", "memory_gb"} | SECTIONS
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


def test_threads_and_precision_flags_are_the_live_settings(monkeypatch):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert collect_env(torch.device("cpu"))["threads"]["intra_op"] == 1
    finally:
        torch.set_num_threads(before)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    flags = collect_env(torch.device("cpu"))["backends"]
    assert flags["cudnn_benchmark"] is True and flags["float32_matmul_precision"] in ("highest", "high", "medium")


def test_speed_variables_by_name_and_prefix():
    from bench.instruments.env import speed_variables
    environ = {"OMP_NUM_THREADS": "2", "TORCHINDUCTOR_MAX_AUTOTUNE": "1", "NCCL_P2P_DISABLE": "1",
               "CUDA_VISIBLE_DEVICES": "0", "HOME": "/root", "PATH": "/bin"}
    assert speed_variables(environ) == {"CUDA_VISIBLE_DEVICES": "0", "NCCL_P2P_DISABLE": "1",
                                        "OMP_NUM_THREADS": "2", "TORCHINDUCTOR_MAX_AUTOTUNE": "1"}


def test_cpu_governor_read_from_cpufreq(monkeypatch, tmp_path):
    from bench.instruments import env
    governor = tmp_path / "scaling_governor"
    governor.write_text("performance\n")
    monkeypatch.setattr(env, "GOVERNOR", governor)
    assert env.collect_env(torch.device("cpu"))["cpu_governor"] == "performance"
    monkeypatch.setattr(env, "GOVERNOR", tmp_path / "missing")
    assert env.collect_env(torch.device("cpu"))["cpu_governor"] == ""


def test_gpu_state_from_a_fake_nvml(monkeypatch):
    """Clocks, persistence, ECC, MIG and PCIe link from NVML; a query the GPU refuses is left out."""
    from bench.instruments import env, nvml
    pynvml = env.pynvml

    def not_supported(*args):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    monkeypatch.setattr(nvml, "handle_for", lambda device: "handle")
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: None)
    app = {pynvml.NVML_CLOCK_SM: 1755, pynvml.NVML_CLOCK_MEM: 3201}
    monkeypatch.setattr(pynvml, "nvmlDeviceGetApplicationsClock", lambda handle, clock: app[clock])
    monkeypatch.setattr(pynvml, "nvmlDeviceGetMaxClockInfo", lambda handle, clock: 3201)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetPersistenceMode", lambda handle: 1)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetEccMode", lambda handle: (1, 1))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetMigMode", not_supported)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCurrPcieLinkGeneration", lambda handle: 4)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetMaxPcieLinkGeneration", lambda handle: 5)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCurrPcieLinkWidth", lambda handle: 8)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetMaxPcieLinkWidth", lambda handle: 16)
    assert env.gpu_state(torch.device("cuda", 0)) == {
        "sm_clock_app_mhz": 1755, "mem_clock_app_mhz": 3201, "mem_clock_max_mhz": 3201, "persistence_mode": 1,
        "ecc": 1, "pcie_gen": 4, "pcie_gen_max": 5, "pcie_width": 8, "pcie_width_max": 16}

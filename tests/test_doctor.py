"""`bench doctor` on CPU: the CPU paths PASS, the GPU paths SKIP with a reason, a broken path FAILs
without stopping the others. GPU branches are reached by patching torch.cuda and NVML."""

import re
from pathlib import Path

import pytest
import torch
from conftest import host_peak_resets, requires_cuda

from bench.commands import doctor_checks
from bench.cli import main
from bench.commands.doctor_checks import FAIL, PASS, SKIP, Setup, check_compile, check_cuda_events, check_loader, check_nvml
from bench.commands.doctor_checks import check_counter_period, check_nvml_energy, check_precision, checks, environment
from bench.commands.doctor_checks import run_check
from loaders.generate import generate_dataset

GPU = torch.device("cuda", 0)


def dali_imports() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def statuses(text: str) -> dict:
    """check name -> (status, reason) from a printed Markdown table."""
    rows = re.findall(r"^\| (.+?) +\| (PASS|FAIL|SKIP) +\| (.*?) +\| +[\d.]+ \|$", text, re.MULTILINE)
    return {name: (status, reason) for name, status, reason in rows}


@pytest.mark.slow  # compiles the add network once (default mode): ~20-60 s on 2 CPU cores
def test_doctor_passes_the_cpu_paths_and_skips_the_gpu_paths(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # no --device: a machine without CUDA
    out = tmp_path / "doctor.md"
    assert main(["doctor", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| torch " in printed and "| nvml " in printed and "no CUDA device" in printed  # the environment
    table = statuses(printed)
    assert list(table) == [name for name, _ in checks()]
    for name in ("tiny dataset", "loader torch", "loader resident", "train fp32", "inference timing",
                 "train bf16 autocast", "compile default", "known answer: step timer", "known answer: samples/s",
                 "known answer: FLOP counter"):
        assert table[name][0] == PASS, (name, table[name])
    peak = table["known answer: memory peak"]
    # A kernel that ignores the reset: SKIP, or PASS where the peak stood at the RSS anyway
    assert peak[0] == PASS or (not host_peak_resets() and peak[0] == SKIP and "clear_refs" in peak[1]), peak
    for name in ("CUDA events", "NVML sampling", "known answer: NVML energy", "NVML counter period",
                 "train fp16 autocast", "compile reduce-overhead", "compile max-autotune"):
        assert table[name][0] == SKIP and "CUDA" in table[name][1], (name, table[name])
    if dali_imports():
        assert table["loader dali"][0] == PASS, table["loader dali"]
    else:
        assert table["loader dali"] == (SKIP, doctor_checks.DALI_HINT)
    assert "graphs" in table["compile default"][1]
    assert statuses(out.read_text()) == table


@requires_cuda
@pytest.mark.gpu
def test_doctor_passes_the_gpu_paths_on_a_gpu(tiny_data, capsys):
    assert main(["doctor", "--device", "cuda", "--data", str(tiny_data), "--skip-compile"]) == 0
    table = statuses(capsys.readouterr().out)
    for name in ("loader torch", "loader resident", "CUDA events", "NVML sampling", "known answer: step timer",
                 "known answer: samples/s", "known answer: FLOP counter", "known answer: memory peak",
                 "known answer: NVML energy", "NVML counter period", "train fp32", "inference timing",
                 "train fp16 autocast"):
        assert table[name][0] == PASS, (name, table[name])


def test_a_failing_path_is_a_fail_with_exit_1_and_the_whole_table(tiny_data, tmp_path, capsys, monkeypatch):
    def broken_runner(variant, cfg, ctx=None):
        raise RuntimeError("planted | failure\nsecond line")
    monkeypatch.setattr(doctor_checks, "measure", broken_runner)
    out = tmp_path / "doctor.md"
    code = main(["doctor", "--device", "cpu", "--data", str(tiny_data), "--workers", "0", "--skip-compile",
                 "--out", str(out)])
    assert code == 1
    table = statuses(capsys.readouterr().out)
    assert list(table) == [name for name, _ in checks(skip_compile=True)]
    for name in ("train fp32", "inference timing", "train bf16 autocast"):
        assert table[name] == (FAIL, r"RuntimeError: planted \| failure second line"), name
    assert table["loader torch"][0] == table["loader resident"][0] == PASS
    assert table["compile default"] == (SKIP, "--skip-compile")
    passed, _, failed = map(int, re.search(r"(\d+) PASS, (\d+) SKIP, (\d+) FAIL", out.read_text()).groups())
    assert failed == 3 and passed == sum(status == PASS for status, _ in table.values())


def test_a_check_that_raises_is_a_one_line_fail(tmp_path):
    def check(setup):
        raise ValueError("bad\nthing")
    status, reason, seconds = run_check(check, Setup(torch.device("cpu"), tmp_path))
    assert (status, reason) == (FAIL, "ValueError: bad thing") and seconds >= 0


@pytest.mark.parametrize("check", [
    check_cuda_events,
    check_nvml,
    check_nvml_energy,
    check_counter_period,
    lambda setup: check_precision(setup, "fp16"),
    lambda setup: check_compile(setup, "reduce-overhead"),
    lambda setup: check_compile(setup, "max-autotune"),
])
def test_gpu_paths_skip_on_cpu_with_a_reason(check, tmp_path):
    status, reason = check(Setup(torch.device("cpu"), tmp_path))  # no data: a skip must not need any
    assert status == SKIP and "CUDA" in reason


def test_dali_missing_skips_with_the_install_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(doctor_checks, "_installed", lambda module: False)
    status, reason = check_loader(Setup(torch.device("cpu"), tmp_path), "dali")
    assert status == SKIP and 'pip install -e ".[dali]"' in reason


def test_unreachable_nvml_on_a_gpu_is_a_fail(tmp_path, monkeypatch):
    monkeypatch.setattr(doctor_checks, "nvml_unavailable_reason", lambda device: "pynvml could not initialise: x")
    status, reason = check_nvml(Setup(GPU, tmp_path))
    assert status == FAIL and reason.startswith("pynvml could not initialise: x")


def test_bf16_skips_on_a_gpu_without_it(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    status, reason = check_precision(Setup(GPU, tmp_path), "bf16")
    assert status == SKIP and "Tesla V100 has no bf16" in reason


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_cuda_graph_modes_are_measured_on_a_gpu(mode, tmp_path, monkeypatch):
    asked = []

    class Result:
        row = {"status": "ok", "val_loss": 0.69, "train_samples_per_s": 900.0, "compile_s": 3.0,
               "compiled_graphs": 2, "graph_breaks": 0}

    def fake_measure(variant, cfg, ctx=None):
        asked.append((variant.compile_mode, cfg.device, cfg.epochs))
        return Result()
    monkeypatch.setattr(doctor_checks, "measure", fake_measure)
    setup = Setup(GPU, tmp_path, split={"train": ["cube_0000"], "val": ["sphere_0000"]}, data=Path(tmp_path))
    status, reason = check_compile(setup, mode)
    assert asked == [(mode, GPU, 1)]
    assert status == PASS and "2 graphs, 0 graph breaks" in reason


def test_a_measured_row_that_failed_is_a_fail(tmp_path, monkeypatch):
    class Result:
        row = {"status": "failed", "error": "CUDA out of memory"}
    monkeypatch.setattr(doctor_checks, "measure", lambda variant, cfg, ctx=None: Result())
    setup = Setup(torch.device("cpu"), tmp_path, split={"train": [], "val": []}, data=Path(tmp_path))
    assert check_precision(setup, "fp32") == (FAIL, "status failed: CUDA out of memory")


def test_environment_on_a_patched_gpu_names_it_and_why_nvml_is_missing(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(doctor_checks, "nvml_unavailable_reason", lambda device: "pynvml could not initialise: x")
    env = environment(GPU)
    assert env["gpu_name"] == "NVIDIA H100 80GB HBM3" and env["compute_capability"] == "9.0"
    assert env["bf16"] == "yes" and env["nvml"] == "n/a: pynvml could not initialise: x"
    assert env["torch"] == torch.__version__ and "matmul precision" in env["tf32"]


def test_environment_on_cpu():
    env = environment(torch.device("cpu"))
    assert env["nvml"] == "n/a: no CUDA device" and env["bf16"] == "CPU autocast" and env["cpu_cores"]


def test_too_small_a_dataset_is_a_fail_that_says_so(tmp_path):
    root = generate_dataset(tmp_path / "small", per_class=2, progress=False)
    status, reason = doctor_checks.check_tiny_data(Setup(torch.device("cpu"), tmp_path, data=root))
    assert status == FAIL and "2 cubes and 2 spheres; 20 of each needed" in reason

"""CUDA-only paths proven on CPU: device resolution, CUDA-event clocks and CUDA memory peaks,
with torch.cuda patched so the logic runs as it would on a GPU machine."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.instruments import memory
from bench.instruments.timing import Clock, StepTimes, time_calls
from bench.options import resolve_device


@pytest.fixture
def cuda_machine(monkeypatch):
    """A machine with `count` CUDA devices (2 unless changed); records set_device calls."""
    state = {"count": 2, "current": 0, "set": []}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: state["count"] > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: state["count"])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: state["current"])

    def set_device(index):
        assert isinstance(index, int), f"set_device needs an index, got {index!r}"  # the crash of issue 8
        state["set"].append(index)

    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    return state


@pytest.mark.parametrize("name,expected", [(None, "cuda:0"), ("cuda", "cuda:0"), ("cuda:0", "cuda:0"),
                                           ("cuda:1", "cuda:1"), ("cpu", "cpu")])
def test_device_names_on_a_cuda_machine(cuda_machine, name, expected):
    device = resolve_device(name)
    assert device == torch.device(expected)
    assert cuda_machine["set"] == ([] if expected == "cpu" else [device.index])


def test_bare_cuda_means_the_current_device(cuda_machine):
    cuda_machine["current"] = 1
    assert resolve_device("cuda") == torch.device("cuda:1") and cuda_machine["set"] == [1]


def test_missing_index_is_a_clear_error(cuda_machine):
    cuda_machine["count"] = 1
    with pytest.raises(ValueError, match=r"--device cuda:1: this machine has 1 CUDA device\(s\), cuda:0 to cuda:0"):
        resolve_device("cuda:1")
    assert cuda_machine["set"] == []


def test_no_device_without_cuda_is_cpu_and_cuda_is_an_error(cuda_machine):
    cuda_machine["count"] = 0
    assert resolve_device(None) == torch.device("cpu")
    with pytest.raises(ValueError, match="torch sees no CUDA device"):
        resolve_device("cuda")


@pytest.mark.parametrize("name", ["foo", "mps", "cuda:x"])
def test_garbage_is_rejected(name):
    with pytest.raises(ValueError, match=f"--device {name}: expected cpu, cuda or cuda:N"):
        resolve_device(name)


def test_cli_garbage_device_is_one_line_and_exit_2(tmp_path):
    repo = Path(__file__).resolve().parents[1]  # this checkout's bench, whatever is pip-installed
    done = subprocess.run([sys.executable, "-m", "bench", "all", "--device", "foo"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120, env={**os.environ, "PYTHONPATH": str(repo)})
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --device foo: expected cpu, cuda or cuda:N"
    assert not (tmp_path / "runs").exists()


class FakeEvent:
    """A CUDA event whose record() reads a fake device clock that advances 2 ms per event."""
    now = 0.0
    syncs = 0

    def __init__(self, enable_timing=False):
        assert enable_timing
        self.t = None

    def record(self):
        FakeEvent.now += 2.0
        self.t = FakeEvent.now

    def elapsed_time(self, end):
        assert FakeEvent.syncs > 0, "elapsed_time read before a synchronize"
        return end.t - self.t


@pytest.fixture
def cuda_events(monkeypatch):
    FakeEvent.now, FakeEvent.syncs = 0.0, 0
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: setattr(FakeEvent, "syncs", FakeEvent.syncs + 1))


def test_clock_uses_cuda_events_and_reads_them_after_a_sync(cuda_events):
    clock = Clock(torch.device("cuda:0"))
    times = StepTimes(clock)
    for _ in range(3):
        times.add(clock.mark(), clock.mark(), clock.mark())
    data, compute = times.collect()
    assert list(data) == [2.0] * 3 and list(compute) == [2.0] * 3
    assert FakeEvent.syncs == 1  # one synchronise per epoch, none inside a step


def test_time_calls_on_cuda_marks_one_event_per_call(cuda_events):
    calls = []
    ms = time_calls(lambda: calls.append(1), 4, torch.device("cuda:0"), warmup=2)
    assert len(calls) == 6 and np.array_equal(ms, [2.0] * 4)


def test_cuda_memory_peak_reset_and_read(monkeypatch):
    seen = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: seen.append(("sync", device)))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: seen.append(("reset", device)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2**20)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 5 * 2**20)
    device = torch.device("cuda:1")
    memory.reset_peak(device)
    assert seen == [("sync", device), ("reset", device)]
    assert memory.read_peak(device) == {"peak_mem_kind": "cuda_max_allocated", "peak_mem_mb": 3.0,
                                        "peak_reserved_mb": 5.0}

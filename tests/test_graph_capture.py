"""CUDA-graph capture (the captured step, the reference loop's capture) with torch.cuda.graph
patched: captures check only their own thread's CUDA calls, as loader threads may touch CUDA."""

import contextlib
from types import SimpleNamespace

import pytest
import torch

from bench.worker import reference_loop, step_capture


@pytest.fixture
def graph_calls(monkeypatch):
    """torch.cuda.graph and its companions patched: records the keyword arguments of each capture."""
    calls = []

    @contextlib.contextmanager
    def graph(cuda_graph, **options):
        calls.append(options)
        yield

    stream = SimpleNamespace(wait_stream=lambda other: None)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: SimpleNamespace(replay=lambda: None))
    monkeypatch.setattr(torch.cuda, "Stream", lambda: stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    return calls


def test_step_capture_checks_only_its_own_threads_cuda_calls(graph_calls):
    body = []
    step_capture._capture(lambda: body.append(1))
    assert body == [1] and graph_calls == [{"capture_error_mode": "thread_local"}]


def test_reference_loop_capture_checks_only_its_own_threads_cuda_calls(graph_calls):
    steps = []
    reference_loop._graph(lambda: steps.append(1), warmup=2)
    assert steps == [1, 1, 1] and graph_calls == [{"capture_error_mode": "thread_local"}]

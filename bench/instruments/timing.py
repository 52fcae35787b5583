"""Device-correct clocks: CUDA events on a GPU (no synchronise inside a step), perf_counter on CPU."""

import time
from itertools import pairwise

import numpy as np
import torch


class Clock:
    """Marks points in time on the device's own timeline; elapsed times are read after a sync."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def elapsed_ms(self, start, end) -> float:
        """Call after sync(): milliseconds between two marks."""
        return start.elapsed_time(end) if self.cuda else (end - start) * 1000.0


class StepTimes:
    """Per-step (start, data ready, done) marks, turned into data-wait and compute milliseconds."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.marks: list[tuple] = []

    def add(self, start, data_ready, done) -> None:
        self.marks.append((start, data_ready, done))

    def collect(self) -> tuple[np.ndarray, np.ndarray]:
        """(data_ms, compute_ms) of every step so far; clears the marks."""
        self.clock.sync()
        data = [self.clock.elapsed_ms(s, d) for s, d, _ in self.marks]
        compute = [self.clock.elapsed_ms(d, e) for _, d, e in self.marks]
        self.marks.clear()
        return np.asarray(data, dtype=float), np.asarray(compute, dtype=float)


def time_calls(fn, iters: int, device: torch.device, warmup: int = 0) -> np.ndarray:
    """Milliseconds of each of `iters` calls of fn after `warmup` untimed ones, on the device's
    clock: the one timing loop behind inference timing, the reference loop and the NVML overhead."""
    for _ in range(warmup):
        fn()
    clock = Clock(device)
    marks = [clock.mark()]
    for _ in range(iters):
        fn()
        marks.append(clock.mark())
    clock.sync()
    return np.array([clock.elapsed_ms(a, b) for a, b in pairwise(marks)], dtype=float)


def rate(ms: np.ndarray, items_per_call: int) -> float:
    """Items per second over timed calls (NaN when nothing was timed)."""
    return items_per_call * len(ms) / (ms.sum() / 1000) if len(ms) and ms.sum() > 0 else float("nan")


def percentiles(ms: np.ndarray) -> dict:
    if len(ms) == 0:
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan")}
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99)}

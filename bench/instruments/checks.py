"""Known answers for the instruments: each check runs one instrument on work whose answer is known
without it and returns what it measured beside that answer.

`bench doctor` runs them on the machine at hand; tests/test_known_answers.py runs them on CPU and,
with torch.cuda and NVML faked, their GPU paths. Nothing here asserts that anything is fast: the
known answer of a timing check is the duration of the very work that was timed.
"""

import math
import mmap
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from bench.instruments import memory
from bench.instruments.mfu import train_flops_per_sample
from bench.instruments.nvml import ENERGY_TOLERANCE, energy_uncertainty_j, window_energy
from bench.instruments.timing import Clock, StepTimes, rate, time_calls
from models import build_model

CHANNELS = (4, 50, 100, 200)  # the embedder's widths, input first (DESIGN.md)
HEAD = (512, 128)  # the hidden widths of every head
CLASSES = 2
EMB_DIM_LATE = 2
STEP_MS = (4.0, 8.0, 12.0, 16.0)  # unequal, so a timer that pairs the wrong marks is caught


@dataclass(frozen=True)
class KnownAnswer:
    """One instrument's reading beside the answer it should give."""
    what: str  # what was measured against what
    measured: float
    expected: float
    unit: str
    tolerance: float  # the largest relative error that passes

    @property
    def error(self) -> float:
        """Relative error of the reading; inf where it or the answer is not a number."""
        if not (math.isfinite(self.measured) and math.isfinite(self.expected)) or self.expected == 0:
            return math.inf
        return abs(self.measured - self.expected) / abs(self.expected)

    @property
    def passed(self) -> bool:
        return self.error <= self.tolerance

    def describe(self) -> str:
        return (f"{self.what}: {self.measured:,.6g} {self.unit}, known {self.expected:,.6g} {self.unit}, "
                f"error {100 * self.error:.2f} % (tolerance {100 * self.tolerance:g} %)")


class KnownWork:
    """Work of known duration on the device. On a CPU a busy loop that stamps its own start and
    end with time.monotonic; on a GPU torch.cuda._sleep for a cycle count calibrated against the
    host clock over one long sleep (not against CUDA events, the clock under test)."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.known_ms: list[float] = []
        self.cycles_per_ms = calibrate_sleep(self.device) if self.cuda else math.nan

    def __call__(self, ms: float) -> None:
        if self.cuda:
            torch.cuda._sleep(int(ms * self.cycles_per_ms))
            self.known_ms.append(ms)
            return
        start = now = time.monotonic()
        while now < start + ms / 1000:
            now = time.monotonic()
        self.known_ms.append((now - start) * 1000)


def calibrate_sleep(device: torch.device, ms: float = 200.0, guess_cycles_per_ms: float = 1.5e6) -> float:
    """GPU clock cycles per millisecond of torch.cuda._sleep, timed on the host over one sleep of
    about `ms` (launch and synchronise cost tens of microseconds: well under 0.1 % of it). A
    shorter sleep first loads the kernel and lets an idle GPU's clocks ramp up."""
    torch.cuda._sleep(int(ms / 4 * guess_cycles_per_ms))
    torch.cuda.synchronize(device)
    cycles = int(ms * guess_cycles_per_ms)
    start = time.perf_counter()
    torch.cuda._sleep(cycles)
    torch.cuda.synchronize(device)
    return cycles / ((time.perf_counter() - start) * 1000)


def check_step_timer(device: torch.device, rounds: int = 3) -> KnownAnswer:
    """time_calls (the timer of inference, the reference loop and the NVML overhead) on calls of
    known, unequal durations: the median relative error over the calls."""
    work = KnownWork(device)
    durations = [ms for _ in range(rounds) for ms in STEP_MS]
    calls = iter(durations)
    timed = time_calls(lambda: work(next(calls)), len(durations), device)
    ratios = timed / np.asarray(work.known_ms)
    return KnownAnswer(f"time_calls over the known length, median of {len(durations)} calls of "
                       f"{min(STEP_MS):g}-{max(STEP_MS):g} ms", float(np.median(ratios)), 1.0, "x", tolerance=0.05)


def check_samples_per_s(device: torch.device, batch_size: int = 32, steps: int = 8) -> KnownAnswer:
    """The runner's throughput path (StepTimes marks per step, then rate over data wait plus
    compute, as runner._global_rate does for one process) on steps whose data wait and compute
    take known times."""
    work, clock = KnownWork(device), Clock(device)
    times = StepTimes(clock)
    for step in range(steps):
        start = clock.mark()
        work(STEP_MS[step % len(STEP_MS)] / 2)  # the data wait
        ready = clock.mark()
        work(STEP_MS[step % len(STEP_MS)])  # the step's compute
        times.add(start, ready, clock.mark())
    data_ms, compute_ms = times.collect()
    known_s = sum(work.known_ms) / 1000
    return KnownAnswer(f"{steps} steps of batch {batch_size} with known data wait and compute",
                       rate(data_ms + compute_ms, batch_size), batch_size * steps / known_s, "samples/s", tolerance=0.05)


def _conv(c_in: int, c_out: int, out_size: int, kernel: int = 3) -> int:
    """FLOPs of a Conv2d per sample: 2 (multiply and add) x each output value's c_in x k x k terms."""
    return 2 * c_out * out_size * out_size * c_in * kernel * kernel


def _linear(n_in: int, n_out: int) -> int:
    return 2 * n_in * n_out


def _embedder_convs(downsample: str, size: int) -> list[int]:
    """Each conv of one embedder, in order: a k=3 pad=1 conv per block at the block's input size,
    then for `strided` a k=3 stride-2 conv at half that size (a max-pool counts no FLOPs)."""
    convs, side = [], size
    for c_in, c_out in zip(CHANNELS, CHANNELS[1:]):
        convs.append(_conv(c_in, c_out, side))
        side //= 2
        if downsample == "strided":
            convs.append(_conv(c_out, c_out, side))
    return convs


def _head(n_in: int, n_out: int) -> int:
    widths = (n_in, *HEAD, n_out)
    return sum(_linear(a, b) for a, b in zip(widths, widths[1:]))


def seed_network_flops(arch: str, downsample: str, size: int = 64) -> tuple[int, int]:
    """(forward, training) FLOPs per sample of a seed network, counted by hand from DESIGN.md's
    layers: only convolutions and linear layers (ReLU, pooling, the fusion and the loss are
    elementwise). Training is what torch's flop counter counts for a forward and backward: the
    backward computes two products per layer, each as large as the forward's (the gradient of the
    input and of the weight), except the first conv of each embedder, whose input (the data)
    needs no gradient: 3 x forward minus those two first convs' forward."""
    convs = _embedder_convs(downsample, size)
    flat = CHANNELS[-1] * (size // 8) ** 2
    if arch == "late":
        heads = 2 * _head(flat, EMB_DIM_LATE) + _linear(2 * EMB_DIM_LATE, 20) + _linear(20, CLASSES)
    else:
        heads = _head((2 if arch == "concat" else 1) * flat, CLASSES)
    forward = 2 * sum(convs) + heads
    return forward, 3 * forward - 2 * convs[0]


def check_flop_counter(arch: str, downsample: str, device: torch.device) -> KnownAnswer:
    """mfu.train_flops_per_sample (torch's flop counter) on a seed network against its count by
    hand. The count depends on shapes only, so the meta device gives the same answer at no cost."""
    model = build_model(arch, downsample).to(device)
    rgb = torch.zeros(2, CHANNELS[0], 64, 64, device=device)
    return KnownAnswer(f"{arch}/{downsample} training FLOPs per sample", train_flops_per_sample(model, rgb, rgb),
                       seed_network_flops(arch, downsample)[1], "FLOP", tolerance=1e-9)


def allocate(nbytes: int, device: torch.device) -> torch.Tensor | mmap.mmap:
    """`nbytes` that the peak must count, held until the returned object is dropped. On the host,
    pages of its own mapped and filled: malloc may serve even a large block from free pages
    the process already holds (resident, so the RSS would not rise at all)."""
    if device.type == "cuda":
        return torch.ones(nbytes, dtype=torch.uint8, device=device)
    block = mmap.mmap(-1, nbytes)
    pages = np.frombuffer(block, dtype=np.uint8)
    pages[:] = 1
    del pages  # the mapping is unmapped when the block is dropped, which needs no view left
    return block


def _current_mb(device: torch.device) -> float:
    """What the peak counts now: CUDA bytes allocated; on CPU the RSS, which the peak was just reset to."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    return memory.host_peak_mb()


def check_memory_peak(device: torch.device, mib: int = 128) -> KnownAnswer | None:
    """memory.reset_peak / read_peak around one allocation of `mib` MiB: the peak must rise by it
    (the peak CUDA allocation on a GPU, the peak RSS on a CPU). A peak that was not reset (one
    carried over from earlier work) reads as a smaller rise or none. None where this kernel
    does not let the process reset its peak RSS: there is then no per-variant peak to check."""
    device = torch.device(device)
    if not memory.reset_peak(device):
        return None
    before = _current_mb(device)
    block = allocate(mib * 2**20, device)
    del block
    peak = memory.read_peak(device)
    return KnownAnswer(f"rise of {peak['peak_mem_kind']} over one allocation", peak["peak_mem_mb"] - before,
                       float(mib), "MiB", tolerance=0.05)


def check_energy_counter(timeline: pd.DataFrame, t0: float, t1: float, counter_period_s: float) -> KnownAnswer | None:
    """The energy counter's joules over [t0, t1] against mean power x time over the same window
    (both from the same samples). It passes within ENERGY_TOLERANCE plus the counter's own
    resolution over the window (nvml.energy_uncertainty_j). None where the counter does not read."""
    joules, source = window_energy(timeline, [(t0, t1)])
    if source != "counter":
        return None
    in_window = timeline[(timeline["time"] >= t0) & (timeline["time"] <= t1)]
    power_w = in_window.groupby("time")["power_w"].sum().mean()  # the GPUs of a tick together
    expected = float(power_w * (t1 - t0))
    resolution = energy_uncertainty_j(power_w, 1, counter_period_s) / expected if expected > 0 else math.nan
    tolerance = ENERGY_TOLERANCE + (resolution if math.isfinite(resolution) else 0.0)
    return KnownAnswer(f"energy counter over {t1 - t0:.1f} s against mean power x time", joules, expected, "J",
                       tolerance=tolerance)

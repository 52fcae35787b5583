"""What the NVML sampler costs the training it watches, resolved to a 95 % interval.

Rounds alternate "without" and "with" the sampler (ABBA order, so a drift in clocks or heat
hits both alike) and each round gives one paired overhead in %. Rounds go on until the 95 %
t-interval of the mean overhead is narrower than the target or the round/time budget runs out;
the result says which, so a figure that did not resolve is never presented as one that did.

The probe trains, so with isolation the parent runs sampler_overhead in a worker (it holds no
CUDA memory of its own); the probe's sampler then runs in the training process, sharing its
interpreter, a cost at least that of the run's sampler, which lives in the parent.
"""

import math
import time

import numpy as np
import torch
from scipy import stats

from bench.config import RunConfig
from bench.instruments.timing import rate, time_calls
from bench.worker.trainer import Trainer
from bench.variants import Variant


def paired_overhead(rate_without, rate_with, target_width_pct: float = 1.0, min_rounds: int = 5,
                    max_rounds: int = 60, budget_s: float = 30.0) -> dict:
    """Mean overhead % = 100 (without - with) / without over alternating rounds, with its 95 %
    interval; `rate_*` are callables returning a throughput."""
    overheads, without, with_ = [], [], []
    start = time.perf_counter()
    low = high = math.nan
    while len(overheads) < max_rounds:
        if len(overheads) % 2 == 0:
            a = rate_without()
            b = rate_with()
        else:
            b = rate_with()
            a = rate_without()
        without.append(a)
        with_.append(b)
        overheads.append(100 * (a - b) / a)
        if len(overheads) >= min_rounds:
            low, high = _interval(overheads)
            if high - low < target_width_pct or time.perf_counter() - start > budget_s:
                break
    width = high - low
    return {"overhead_pct": float(np.mean(overheads)), "ci95_low_pct": low, "ci95_high_pct": high,
            "ci95_width_pct": width, "target_width_pct": target_width_pct, "resolved": bool(width < target_width_pct),
            "rounds": len(overheads), "samples_per_s_without": float(np.median(without)),
            "samples_per_s_with": float(np.median(with_))}


def _interval(values: list[float]) -> tuple[float, float]:
    """The 95 % Student-t interval of the mean (a zero-spread sample gives a zero-width one)."""
    mean, sem = float(np.mean(values)), float(stats.sem(values))
    if sem == 0:
        return mean, mean
    low, high = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=sem)
    return float(low), float(high)


def sampler_overhead(cfg: RunConfig, devices: list, period_s: float, variant: Variant, steps: int = 50,
                     **budget) -> dict:
    """The overhead of a sampler of `devices` every `period_s` on `variant`'s training step, on a
    fixed batch on the device."""
    from bench.instruments.nvml import NvmlSampler

    trainer = Trainer(variant, cfg)
    b = variant.batch_size
    rgb = torch.rand(b, 4, 64, 64, device=cfg.device)
    lidar = torch.rand(b, 4, 64, 64, device=cfg.device)
    label = torch.randint(0, 2, (b,), device=cfg.device)

    def rate_without() -> float:
        return rate(time_calls(lambda: trainer.step(rgb, lidar, label), steps, cfg.device), b)

    def rate_with() -> float:
        with NvmlSampler(devices, period_s):  # every GPU the run samples
            return rate_without()

    rate_without()  # warm-up
    return paired_overhead(rate_without, rate_with, **budget)

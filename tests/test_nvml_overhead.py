"""The NVML overhead's statistics on fake throughputs: alternating rounds until the 95 % interval
is narrower than the target, or the budget runs out and the result says so."""

import itertools

import numpy as np
import pytest
from scipy import stats

from bench.parent.nvml_overhead import paired_overhead


def fake_rates(overhead_pct: float, noise_pct: float, seed: int = 0):
    """rate_without/rate_with around 1000 samples/s, `with` slower by overhead_pct, with noise;
    the calls are logged so the alternation can be checked."""
    rng = np.random.default_rng(seed)
    calls = []

    def without():
        calls.append("A")
        return 1000.0 * (1 + noise_pct / 100 * rng.standard_normal())

    def with_sampler():
        calls.append("B")
        return 1000.0 * (1 - overhead_pct / 100) * (1 + noise_pct / 100 * rng.standard_normal())

    return without, with_sampler, calls


def test_quiet_measurement_resolves_within_a_point():
    without, with_sampler, calls = fake_rates(overhead_pct=2.0, noise_pct=0.3)
    result = paired_overhead(without, with_sampler, target_width_pct=1.0, min_rounds=5, max_rounds=60)
    assert result["resolved"] is True and result["rounds"] == 5
    assert result["ci95_width_pct"] < 1.0
    assert result["ci95_low_pct"] < 2.0 < result["ci95_high_pct"]
    assert "".join(calls) == "AB" + "BA" + "AB" + "BA" + "AB"  # ABBA order: drift hits both alike


def test_noisy_measurement_runs_out_of_rounds_and_says_so():
    without, with_sampler, _ = fake_rates(overhead_pct=0.5, noise_pct=5.0, seed=1)
    result = paired_overhead(without, with_sampler, target_width_pct=1.0, min_rounds=5, max_rounds=12)
    assert result["rounds"] == 12 and result["resolved"] is False
    assert result["ci95_width_pct"] > 1.0


def test_interval_is_the_student_t_interval_of_the_paired_overheads():
    values = itertools.cycle([1010.0, 990.0, 1000.0])
    result = paired_overhead(lambda: 1000.0, lambda: next(values), min_rounds=6, max_rounds=6)
    overheads = [-1.0, 1.0, 0.0, -1.0, 1.0, 0.0]
    low, high = stats.t.interval(0.95, 5, loc=np.mean(overheads), scale=stats.sem(overheads))
    assert result["overhead_pct"] == pytest.approx(0.0, abs=1e-12)
    assert (result["ci95_low_pct"], result["ci95_high_pct"]) == pytest.approx((low, high))
    assert result["samples_per_s_without"] == 1000.0


def test_time_budget_ends_the_rounds():
    without, with_sampler, _ = fake_rates(overhead_pct=0.5, noise_pct=5.0, seed=2)
    result = paired_overhead(without, with_sampler, min_rounds=5, max_rounds=1000, budget_s=0.0)
    assert result["rounds"] == 5 and result["resolved"] is False

"""When is a difference real? One verdict per comparison of two sets of timing samples.

Rules (the compare report and the gate print them):

- Each side needs at least `min_samples` values (per-epoch throughput windows, or pytest-benchmark
  rounds), and neither run may be flagged as throttled; otherwise the verdict is "inconclusive".
- The ratio is centre(b) / centre(a) (mean for throughput windows, median for timing rounds) with
  a bootstrap percentile interval at `level` (scipy.stats.bootstrap, fixed seed, so a report
  rebuilds identically), and a Mann-Whitney U test (scipy.stats.mannwhitneyu) on the raw samples.
- A change ("faster"/"slower") is called only when p < `alpha`, the interval excludes 1 and the
  ratio itself lies beyond `threshold` (the smallest change worth calling, as asv's factor; 0
  calls any proven change).
- "same" only when the whole interval lies within the equivalence margin [1/(1+m), 1+m].
- Anything else is "inconclusive": the data cannot tell.

Two-sided Mann-Whitney at alpha 0.01 needs 5 samples a side; one-sided at 0.002 (the gate) needs
6, so `min_samples` must not be set lower than the test can reach.
"""

from dataclasses import dataclass

import numpy as np
from scipy import stats

FASTER, SLOWER, SAME, INCONCLUSIVE = "faster", "slower", "same", "inconclusive"


@dataclass(frozen=True)
class Verdict:
    ratio: float  # centre(b) / centre(a)
    low: float  # bootstrap interval of the ratio
    high: float
    p: float  # Mann-Whitney U p-value (nan when not tested)
    n_a: int
    n_b: int
    verdict: str
    reason: str = ""


def _interval(a, b, centre, level: float) -> tuple[float, float]:
    if np.ptp(a) == 0 and np.ptp(b) == 0:  # no spread at all: the interval is the point
        ratio = centre(b) / centre(a)
        return ratio, ratio
    result = stats.bootstrap((a, b), lambda x, y, axis: centre(y, axis=axis) / centre(x, axis=axis),
                             n_resamples=2000, confidence_level=level, method="percentile",
                             vectorized=True, rng=np.random.default_rng(0))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def compare_samples(a, b, *, higher_is_better: bool, level: float = 0.99, alpha: float = 0.01,
                    margin: float = 0.05, threshold: float = 0.0, min_samples: int = 5,
                    one_sided: bool = False, centre=np.mean, throttled: bool = False) -> Verdict:
    """Verdict on b against a. With `one_sided`, only a change for the worse is tested (the gate)."""
    a = np.asarray(a, dtype=float)[~np.isnan(np.asarray(a, dtype=float))]
    b = np.asarray(b, dtype=float)[~np.isnan(np.asarray(b, dtype=float))]
    n_a, n_b = len(a), len(b)
    if n_a == 0 or n_b == 0:
        return Verdict(np.nan, np.nan, np.nan, np.nan, n_a, n_b, INCONCLUSIVE, "no samples")
    ratio = float(centre(b) / centre(a))
    if min(n_a, n_b) < min_samples:
        return Verdict(ratio, np.nan, np.nan, np.nan, n_a, n_b, INCONCLUSIVE,
                       f"too few samples ({n_a} vs {n_b}, need {min_samples} a side)")
    low, high = _interval(a, b, centre, level)
    worse = "less" if higher_is_better else "greater"  # b worse than a
    p = float(stats.mannwhitneyu(b, a, alternative=worse if one_sided else "two-sided").pvalue)
    reason = "run flagged as throttled" if throttled else ""
    if throttled:
        verdict = INCONCLUSIVE
    elif p < alpha and not (low <= 1 <= high) and not (1 / (1 + threshold) <= ratio <= 1 + threshold):
        verdict = FASTER if (ratio > 1) == higher_is_better else SLOWER
    elif 1 / (1 + margin) <= low and high <= 1 + margin:
        verdict = SAME
    else:
        verdict = INCONCLUSIVE
        reason = f"p = {p:.2g} >= {alpha:g}" if p >= alpha else f"interval not within ±{margin:.0%}"
    return Verdict(ratio, low, high, p, n_a, n_b, verdict, reason)

"""When is a difference real? One verdict per comparison of two sets of timing samples.

Rules (the compare report and the gate print them), one function (`decide`) for both:

- Each side needs at least `min_samples` values (per-epoch throughput windows, per-step times,
  or pytest-benchmark rounds), and neither run may be flagged as throttled; otherwise the
  verdict is "inconclusive".
- Independent samples (`compare_samples`: epoch windows, benchmark rounds): the ratio is
  centre(b) / centre(a) (mean for throughput windows, median for timing rounds) with a bootstrap
  percentile interval at `level` (scipy.stats.bootstrap, fixed seed, so a report rebuilds
  identically), and a Mann-Whitney U test (scipy.stats.mannwhitneyu) on the raw samples.
- A time series (`compare_series`: the per-step times of a short run, where neighbouring steps
  are correlated, so an i.i.d. bootstrap or rank test would claim too much): each side is
  resampled with a circular block bootstrap (arch.bootstrap, block length by Politis and White's
  rule), the ratio's interval and a two-sided p come from the resampled ratios.
- Significant (p < `alpha` and the interval excludes 1): "faster"/"slower" when the ratio itself
  lies beyond `threshold` (the smallest change worth calling, as asv's factor; 0 calls any proven
  change), else "faster-within-threshold"/"slower-within-threshold": the data show the change,
  it is only too small to count (the gate passes it).
- Not significant: "same" only when the whole interval lies within the equivalence margin
  [1/(1+m), 1+m]; anything else is "inconclusive": the data cannot tell.

Two-sided Mann-Whitney at alpha 0.01 needs 5 samples a side; one-sided at 0.002 (the gate) needs
6, so `min_samples` must not be set lower than the test can reach.
"""

from dataclasses import dataclass

import numpy as np
from scipy import stats

FASTER, SLOWER, SAME, INCONCLUSIVE = "faster", "slower", "same", "inconclusive"
FASTER_WITHIN, SLOWER_WITHIN = "faster-within-threshold", "slower-within-threshold"
VERDICTS = (FASTER, SLOWER, FASTER_WITHIN, SLOWER_WITHIN, SAME, INCONCLUSIVE)


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


def decide(ratio: float, low: float, high: float, p: float, *, higher_is_better: bool, alpha: float,
           margin: float, threshold: float, throttled: bool = False) -> tuple[str, str]:
    """(verdict, reason) from a ratio b/a, its interval and p: the rules above, for every caller."""
    if throttled:
        return INCONCLUSIVE, "run flagged as throttled"
    if p < alpha and not (low <= 1 <= high):
        better = (ratio > 1) == higher_is_better
        if 1 / (1 + threshold) <= ratio <= 1 + threshold:
            return (FASTER_WITHIN if better else SLOWER_WITHIN), f"ratio within the {threshold:.0%} threshold"
        return (FASTER if better else SLOWER), ""
    if 1 / (1 + margin) <= low and high <= 1 + margin:
        return SAME, ""
    return INCONCLUSIVE, f"p = {p:.2g} >= {alpha:g}" if p >= alpha else f"interval not within ±{margin:.0%}"


def _finite(values) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return values[np.isfinite(values)]


def _too_short(a: np.ndarray, b: np.ndarray, centre, min_samples: int, unit: str) -> Verdict | None:
    """The inconclusive verdict of sides too short to compare; None when both are long enough."""
    n_a, n_b = len(a), len(b)
    if n_a == 0 or n_b == 0:
        return Verdict(np.nan, np.nan, np.nan, np.nan, n_a, n_b, INCONCLUSIVE, "no samples")
    if min(n_a, n_b) < min_samples:
        return Verdict(float(centre(b) / centre(a)), np.nan, np.nan, np.nan, n_a, n_b, INCONCLUSIVE,
                       f"too few {unit} ({n_a} vs {n_b}, need {min_samples} a side)")
    return None


def compare_samples(a, b, *, higher_is_better: bool, level: float = 0.99, alpha: float = 0.01,
                    margin: float = 0.05, threshold: float = 0.0, min_samples: int = 5,
                    one_sided: bool = False, centre=np.mean, throttled: bool = False) -> Verdict:
    """Verdict on b against a. With `one_sided`, only a change for the worse is tested (the gate)."""
    a, b = _finite(a), _finite(b)
    n_a, n_b = len(a), len(b)
    short = _too_short(a, b, centre, min_samples, "samples")
    if short:
        return short
    ratio = float(centre(b) / centre(a))
    low, high = _interval(a, b, centre, level)
    worse = "less" if higher_is_better else "greater"  # b worse than a
    p = float(stats.mannwhitneyu(b, a, alternative=worse if one_sided else "two-sided").pvalue)
    verdict, reason = decide(ratio, low, high, p, higher_is_better=higher_is_better, alpha=alpha, margin=margin,
                             threshold=threshold, throttled=throttled)
    return Verdict(ratio, low, high, p, n_a, n_b, verdict, reason)


def _block_means(series: np.ndarray, block: float, centre, reps: int, seed: int) -> np.ndarray:
    """`reps` circular-block-bootstrap replicates of centre(series)."""
    from arch.bootstrap import CircularBlockBootstrap
    draws = CircularBlockBootstrap(max(int(round(block)), 1), series, seed=seed).apply(centre, reps)
    return draws[:, 0]


def _block_length(series: np.ndarray) -> float:
    """Politis and White's optimal circular block length; 1 for a series without spread."""
    from arch.bootstrap import optimal_block_length
    if np.ptp(series) == 0:
        return 1.0
    return float(optimal_block_length(series)["circular"].iloc[0])


def compare_series(a, b, *, higher_is_better: bool, level: float = 0.99, alpha: float = 0.01,
                   margin: float = 0.05, threshold: float = 0.0, min_samples: int = 30, centre=np.mean,
                   throttled: bool = False, reps: int = 2000) -> Verdict:
    """Verdict on series b against series a (per-step times in run order), respecting their
    autocorrelation: each side resampled in blocks, one block length for both (the longer)."""
    a, b = _finite(a), _finite(b)
    n_a, n_b = len(a), len(b)
    short = _too_short(a, b, centre, min_samples, "steps")
    if short:
        return short
    ratio = float(centre(b) / centre(a))
    block = max(_block_length(a), _block_length(b))
    ratios = _block_means(b, block, centre, reps, seed=1) / _block_means(a, block, centre, reps, seed=0)
    tail = (1 - level) / 2
    low, high = (float(q) for q in np.quantile(ratios, [tail, 1 - tail]))
    below, above = np.sum(ratios <= 1), np.sum(ratios >= 1)
    p = float(min(1.0, 2 * (min(below, above) + 1) / (reps + 1)))
    verdict, reason = decide(ratio, low, high, p, higher_is_better=higher_is_better, alpha=alpha, margin=margin,
                             threshold=threshold, throttled=throttled)
    return Verdict(ratio, low, high, p, n_a, n_b, verdict, reason)

"""Mean and 95 % interval over seeds, and which networks' intervals overlap.

A run with `--seeds 42,43,44` writes one results.csv row per variant and seed. One seed's
accuracy says little about which network is better; the spread over seeds (init and shuffling
change, data and split stay) says how far a difference can be trusted.

The interval is Student's t interval of the mean (scipy.stats.t), which holds for the small n of
a seed study when the per-seed values are roughly normal; `method="bootstrap"` gives scipy's
percentile bootstrap instead (needs more seeds to mean anything). With one seed there is no
interval: low and high are NaN and the report writes n/a.

Overlap is a conservative reading: two 95 % intervals that do not overlap mean the difference is
significant (at better than 5 %); overlapping intervals mean it is not established, not that the
networks are equal. Welch's t-test p-value is given beside it for the finer reading.
"""

import itertools
import math

import numpy as np
import pandas as pd
from scipy import stats


METRICS = ("accuracy", "val_loss", "time_to_target_s", "train_samples_per_s")
LABELS = {"accuracy": "accuracy %", "val_loss": "val_loss", "time_to_target_s": "time to target s",
          "train_samples_per_s": "train samples/s"}
DIGITS = {"accuracy": 2, "val_loss": 4, "time_to_target_s": 1, "train_samples_per_s": 0}
CONFIDENCE = 0.95


def interval(values, method: str = "t", confidence: float = CONFIDENCE) -> tuple[float, float, float, int]:
    """(mean, low, high, n) over the finite values; low/high NaN when n < 2."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(values.mean())
    if n == 1:
        return mean, math.nan, math.nan, 1
    if np.ptp(values) == 0:  # identical values: a zero-width interval (scipy would give NaN)
        return mean, mean, mean, n
    if method == "t":
        low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=stats.sem(values))
    elif method == "bootstrap":
        result = stats.bootstrap((values,), np.mean, confidence_level=confidence, method="percentile",
                                 random_state=0)
        low, high = result.confidence_interval
    else:
        raise ValueError(f"interval method must be 't' or 'bootstrap', got {method!r}")
    return mean, float(low), float(high), n


def summarize_seeds(rows: pd.DataFrame, metrics=METRICS, method: str = "t") -> pd.DataFrame:
    """One row per variant: seeds, and per metric {m}_mean, {m}_low, {m}_high, {m}_n."""
    missing = [c for c in ("variant", "seed", *metrics) if c not in rows]
    if missing:
        raise ValueError(f"results rows lack columns {missing} (expected one row per variant and seed)")
    out = []
    for variant, group in rows.groupby("variant", sort=False):
        if group["seed"].duplicated().any():
            raise ValueError(f"variant {variant} has several rows for one seed; keep one per (variant, seed)")
        summary = {"variant": variant, "seeds": len(group)}
        for metric in metrics:
            mean, low, high, n = interval(group[metric], method)
            summary.update({f"{metric}_mean": mean, f"{metric}_low": low, f"{metric}_high": high, f"{metric}_n": n})
        out.append(summary)
    return pd.DataFrame(out)


def overlaps(summary: pd.DataFrame, rows: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Every pair of variants: whether their intervals of `metric` overlap (None when either has
    no interval) and Welch's t-test p-value over the per-seed values."""
    by_variant = summary.set_index("variant")
    pairs = []
    for a, b in itertools.combinations(by_variant.index, 2):
        low_a, high_a = by_variant.at[a, f"{metric}_low"], by_variant.at[a, f"{metric}_high"]
        low_b, high_b = by_variant.at[b, f"{metric}_low"], by_variant.at[b, f"{metric}_high"]
        known = not any(math.isnan(v) for v in (low_a, high_a, low_b, high_b))
        values_a = rows.loc[rows["variant"] == a, metric].dropna()
        values_b = rows.loc[rows["variant"] == b, metric].dropna()
        p = math.nan
        if len(values_a) > 1 and len(values_b) > 1 and (values_a.std() > 0 or values_b.std() > 0):
            p = float(stats.ttest_ind(values_a, values_b, equal_var=False).pvalue)
        pairs.append({"a": a, "b": b, "overlap": bool(low_a <= high_b and low_b <= high_a) if known else None,
                      "p_welch": p})
    return pd.DataFrame(pairs, columns=["a", "b", "overlap", "p_welch"])


def _cell(summary_row, metric: str) -> str:
    mean, low, high = (summary_row[f"{metric}_{k}"] for k in ("mean", "low", "high"))
    n, seeds, places = summary_row[f"{metric}_n"], summary_row["seeds"], DIGITS.get(metric, 3)
    if n == 0:
        return "n/a"
    text = f"{mean:,.{places}f} [{low:,.{places}f}, {high:,.{places}f}]" if n > 1 else f"{mean:,.{places}f} (interval n/a)"
    return text if n == seeds else f"{text} ({n} of {seeds} seeds)"


def seeds_section(rows: pd.DataFrame, method: str = "t") -> str:
    """Markdown: mean [95 % interval] per variant and metric, then the accuracy overlaps."""
    if rows.empty:
        return ""
    summary = summarize_seeds(rows, method=method)
    table = pd.DataFrame({"variant": summary["variant"], "seeds": summary["seeds"]})
    for metric in METRICS:
        table[LABELS[metric]] = [_cell(row, metric) for _, row in summary.iterrows()]
    kind = "Student's t" if method == "t" else "percentile bootstrap"
    parts = ["## Seeds: mean and 95 % interval", "",
             f"Mean over seeds with the {kind} 95 % interval of the mean in brackets; a metric missing "
             "in some seeds (target never reached) counts the seeds that have it.", "",
             table.to_markdown(index=False, disable_numparse=True)]
    pairs = overlaps(summary, rows)
    if not pairs.empty:
        pairs["accuracy intervals"] = pairs["overlap"].map({True: "overlap: difference not established",
                                                            False: "apart: difference significant"}).fillna("n/a (one seed)")
        pairs["Welch p"] = pairs["p_welch"].map(lambda p: "n/a" if math.isnan(p) else "< 0.001" if p < 0.001 else f"{p:.3f}")
        parts += ["", "Accuracy, pair by pair:", "",
                  pairs[["a", "b", "accuracy intervals", "Welch p"]].to_markdown(index=False, disable_numparse=True)]
    return "\n".join(parts) + "\n"

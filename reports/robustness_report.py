"""robustness.csv: accuracy of each trained network with one sensor degraded, and its report.

One row per variant, seed and condition (bench.worker.robustness documents the conditions and levels).
The section puts the clean accuracy first in each row, so the cost of a degradation reads off
beside it, and names the network that keeps the most accuracy when a modality is missing.
"""

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from reports.intervals import interval  # noqa: E402
from reports.results import write_png  # noqa: E402

ROBUSTNESS = "robustness.csv"
ROBUSTNESS_COLUMNS = ["variant", "seed", "condition", "level", "accuracy", "val_loss", "samples"]
MISSING = ("rgb_missing", "lidar_missing")


def _labelled(table: pd.DataFrame) -> pd.DataFrame:
    """Rows with a `label` (condition, plus the level when it has one), the last row per
    (variant, seed, condition, level) winning as in results.csv."""
    missing = [c for c in ROBUSTNESS_COLUMNS[:5] if c not in table]
    if missing:
        raise ValueError(f"{ROBUSTNESS} lacks columns {missing} (expected {', '.join(ROBUSTNESS_COLUMNS)})")
    table = table.drop_duplicates(["variant", "seed", "condition", "level"], keep="last")
    labels = [name if not level else f"{name} {level:g}" for name, level in zip(table["condition"], table["level"])]
    return table.assign(label=labels)


def accuracy_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per variant and condition label: mean accuracy over seeds and the 95 % t interval."""
    rows = []
    for (variant, label), group in _labelled(table).groupby(["variant", "label"], sort=False):
        mean, low, high, n = interval(group["accuracy"])
        rows.append({"variant": variant, "label": label, "condition": group["condition"].iloc[0],
                     "mean": mean, "low": low, "high": high, "seeds": n})
    return pd.DataFrame(rows)


def _cell(row) -> str:
    if math.isnan(row["low"]):
        return f"{row['mean']:.2f}"
    return f"{row['mean']:.2f} ±{(row['high'] - row['low']) / 2:.2f}"


def robustness_section(table: pd.DataFrame) -> str:
    """Markdown: accuracy % per network (rows) and condition (columns, clean first), then the
    network most robust to each missing modality."""
    if table.empty:
        return ""
    summary = accuracy_summary(table)
    summary["cell"] = summary.apply(_cell, axis=1)
    labels = list(dict.fromkeys(summary["label"]))
    labels = ["clean", *[label for label in labels if label != "clean"]] if "clean" in labels else labels
    wide = summary.pivot(index="variant", columns="label", values="cell")
    wide = wide.reindex(index=list(dict.fromkeys(summary["variant"])), columns=labels).fillna("n/a")
    seeds = int(summary["seeds"].max())
    note = "mean over seeds ±half the 95 % t interval" if seeds > 1 else "one seed, no interval"
    parts = ["## Robustness: accuracy % with one sensor degraded at test time", "",
             f"Validation accuracy %, {note}. Noise levels: RGB sigma in [0, 1] intensity units on R, G, B; "
             "LiDAR sigma in metres of range on returned points; dropout: share of points made no-return.", "",
             wide.reset_index().to_markdown(index=False, disable_numparse=True), ""]
    for condition in MISSING:
        rows = summary[summary["condition"] == condition].sort_values("mean", ascending=False)
        if rows.empty:
            continue
        best = rows.iloc[0]
        clean = summary[(summary["variant"] == best["variant"]) & (summary["label"] == "clean")]["mean"]
        close = [r["variant"] for _, r in rows.iloc[1:].iterrows()
                 if not math.isnan(best["low"]) and not math.isnan(r["high"]) and r["high"] >= best["low"]]
        tie = f"; interval overlaps {', '.join(close)}" if close else ""
        parts.append(f"- most robust to {condition}: {best['variant']} ({best['mean']:.2f} %, clean "
                     f"{clean.iloc[0] if len(clean) else math.nan:.2f} %){tie}")
    return "\n".join(parts) + "\n"


def write_robustness_plot(table: pd.DataFrame, out_dir: str | Path) -> Path:
    """plots/robustness.png: grouped bars, accuracy per condition and network, 95 % error bars."""
    summary = accuracy_summary(table)
    labels = list(dict.fromkeys(summary["label"]))
    variants = list(dict.fromkeys(summary["variant"]))
    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(max(8, 0.7 * len(labels) * max(1, len(variants) / 2)), 4.5))
    x = np.arange(len(labels))
    for k, variant in enumerate(variants):
        rows = summary[summary["variant"] == variant].set_index("label").reindex(labels)
        # the interval drawn inside 0-100 %: with few seeds a t interval of accuracy runs past both
        below = (rows["mean"] - rows["low"].clip(lower=0)).fillna(0).clip(lower=0)
        above = (rows["high"].clip(upper=100) - rows["mean"]).fillna(0).clip(lower=0)
        ax.bar(x + k * width - 0.4 + width / 2, rows["mean"], width, yerr=[below, above], capsize=2, label=variant)
    ax.set_xticks(x, labels, rotation=45, ha="right")
    ax.set_ylabel("validation accuracy % (95 % interval over seeds)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        return write_png(fig, Path(out_dir) / "robustness.png")
    finally:
        plt.close(fig)

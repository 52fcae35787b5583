"""Change points in the history: where a series (hardware, case, metric) over commits steps.

Method (ruptures PELT, least squares, on the noise-standardised log of each commit's value):

- One point per commit: the median of its records (several runs of one commit are one point);
  points in commit order (commit time where the input recorded or git resolved it, else the run
  time, else the order results were added). A run without a commit id is a point of its own.
- The noise is estimated robustly from successive differences (1.4826 * MAD / sqrt 2), which a
  step moves by one difference only; dividing by it makes the penalty mean the same for a
  quiet series and a noisy one. The log makes a step a ratio, whatever the unit.
- PELT finds the segmentation that minimises the squared error plus `penalty * log(n)` per
  change (a BIC-like penalty; 5, above BIC's 2, because CI series have heavier tails than
  Gaussian noise: over 200 seeded series of 40 commits with 3 % noise, 0.5 % gave a false change
  and a 10 % step was found at its commit 99.5 % of the time; tests/test_history.py checks both).
  Segments are at least `min_size` commits long.
- Each proposed change is then confirmed on the points either side (reports/stats.py: median
  ratio, bootstrap interval, two-sided Mann-Whitney U at `alpha`): only "faster"/"slower"
  (better/worse for the metric) is reported, so a change needs min_size commits a side.

Each change names the environment fields whose usual value differs either side (every field of
env.json, nested ones dotted, so fields added to env.json later show up without a change here).
"""

from collections import Counter

import numpy as np
import pandas as pd
import ruptures

from reports.compare import flat_env
from reports.history.store import HIGHER_IS_BETTER, LABELS
from reports.stats import compare_samples

PENALTY, MIN_SIZE, ALPHA, LEVEL = 5.0, 5, 0.01, 0.95  # 5 a side: the fewest where p < 0.01 is possible
SERIES = ["hardware", "case", "metric"]
# what changes with every run without changing speed: ids, clocks of the run, measured overheads
VOLATILE = ("settings.code", "commit_info.id", "commit_info.time", "commit_info.author_time", "commit_info.dirty",
            "started", "idle_power_w", "nvml_overhead.", "machine_info.node")
SHORT = 7


def _when(records: pd.DataFrame) -> pd.Series:
    """The ordering time of each record: commit time, else run time, else when it was added."""
    def parse(column):
        values = records[column] if column in records else pd.Series(None, index=records.index)
        return pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")
    return parse("commit_time").fillna(parse("time")).fillna(parse("added"))


def points(records: pd.DataFrame) -> pd.DataFrame:
    """One row per series and commit, in commit order: value (median of the commit's records),
    low/high (the range of its samples), the records' count, env id, time and report link."""
    known = records["commit"].astype(str) != ""
    records = records.assign(when=_when(records), point=np.where(known, records["commit"], "?" + records["source"]))
    rows = []
    for (hardware, case, metric, point), group in records.groupby(SERIES + ["point"], sort=False):
        samples = [s for samples, value in zip(group["samples"], group["value"])
                   for s in (samples if isinstance(samples, list) else [value])]
        last = group.sort_values("when").iloc[-1]
        rows.append({"hardware": hardware, "case": case, "metric": metric, "point": point, "commit": last["commit"],
                     "label": str(last["commit"])[:SHORT] or f"? {last['source'].rstrip('/').split('/')[-1]}",
                     "when": group["when"].min(),
                     "value": float(np.median(group["value"])), "low": min(samples), "high": max(samples),
                     "records": len(group), "samples": len(samples), "env": last["env"],
                     "time": last.get("time"), "report": last["report"]})
    table = pd.DataFrame(rows)
    return table.sort_values(SERIES + ["when"], kind="stable").reset_index(drop=True) if len(table) else table


def noise(log_values: np.ndarray) -> float:
    """Robust standard deviation of a series' noise, from its successive differences."""
    steps = np.diff(log_values)
    return float(1.4826 * np.median(np.abs(steps - np.median(steps))) / np.sqrt(2))


def change_indices(values, penalty: float = PENALTY, min_size: int = MIN_SIZE) -> list[int]:
    """Indices where a new segment starts, before confirmation (PELT on the standardised series)."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n < 2 * min_size:
        return []
    y = np.log(values) if (values > 0).all() else values / np.abs(np.median(values) or 1)
    sigma = noise(y) or max(1e-9, float(np.std(y)) * 1e-3)  # a flat series: any real step stands out
    signal = ((y - np.median(y)) / sigma).reshape(-1, 1)
    return ruptures.Pelt(model="l2", min_size=min_size, jump=1).fit(signal).predict(pen=penalty * np.log(n))[:-1]


def env_differences(before: list[dict], after: list[dict]) -> list[str]:
    """"field: usual value before -> usual value after" for every field whose most common value
    differs either side of a change (volatile run identifiers left out)."""
    before, after = [flat_env(e) for e in before], [flat_env(e) for e in after]
    keys = dict.fromkeys(k for env in before + after for k in env)
    lines = []
    for key in keys:
        if key.startswith(VOLATILE):
            continue
        usual = [Counter(str(env.get(key, "(none)")) for env in side).most_common(1)[0][0] for side in (before, after)]
        if usual[0] != usual[1]:
            lines.append(f"{key}: {usual[0]} -> {usual[1]}")
    return lines


def series_changes(series: pd.DataFrame, envs: dict, penalty: float = PENALTY, min_size: int = MIN_SIZE,
                   alpha: float = ALPHA, level: float = LEVEL) -> list[dict]:
    """The confirmed changes of one series (its points in commit order)."""
    series = series.reset_index(drop=True)
    values = series["value"].to_numpy(float)
    edges = [0, *change_indices(values, penalty, min_size), len(values)]
    metric = series["metric"].iloc[0]
    higher = HIGHER_IS_BETTER.get(metric, True)
    changes = []
    for start, cut, end in zip(edges, edges[1:], edges[2:]):
        before, after = series.iloc[start:cut], series.iloc[cut:end]
        verdict = compare_samples(before["value"], after["value"], higher_is_better=higher, level=level, alpha=alpha,
                                  centre=np.median, min_samples=min_size)
        if verdict.verdict not in ("faster", "slower"):
            continue
        first, last = series.iloc[cut - 1], series.iloc[cut]
        differ = env_differences([envs[e] for e in before["env"]], [envs[e] for e in after["env"]])
        better = verdict.verdict == "faster"
        changes.append({
            "hardware": first["hardware"], "case": first["case"], "metric": metric,
            "before_commit": first["commit"], "after_commit": last["commit"],
            "index": cut, "before_median": float(np.median(before["value"])),
            "after_median": float(np.median(after["value"])), "ratio": verdict.ratio, "low": verdict.low,
            "high": verdict.high, "p": verdict.p, "commits_before": len(before), "commits_after": len(after),
            "direction": "improvement" if better else "regression", "env_differs": "; ".join(differ)})
    return changes


def find_changes(records: pd.DataFrame, envs: dict, **rules) -> pd.DataFrame:
    """Every confirmed change of every series in the store."""
    table = points(records)
    rows = [c for _, series in table.groupby(SERIES, sort=False) for c in series_changes(series, envs, **rules)]
    columns = ["hardware", "case", "metric", "before_commit", "after_commit", "index", "before_median", "after_median",
               "ratio", "low", "high", "p", "commits_before", "commits_after", "direction", "env_differs"]
    return pd.DataFrame(rows, columns=columns)


def number(value: float) -> str:
    """Readable at any size: 21,710 / 4.615 / 0.004509."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def explain(change: dict) -> str:
    """One sentence for a change: what moved, by how much, between which commits, and what differs."""
    label = LABELS.get(change["metric"], change["metric"])
    text = (f"{label} {change['direction']}: x{change['ratio']:.3f} ({LEVEL:.0%} {change['low']:.3f}-"
            f"{change['high']:.3f}), median {number(change['before_median'])} -> {number(change['after_median'])}, "
            f"between {str(change['before_commit'])[:SHORT] or 'unknown'} and "
            f"{str(change['after_commit'])[:SHORT] or 'unknown'}")
    return text + (f"; differs: {change['env_differs']}" if change["env_differs"] else "; environment unchanged")


def render(changes: pd.DataFrame) -> str:
    """Markdown table of the changes (commit ids shortened)."""
    if changes.empty:
        return "No change point: no series stepped beyond its noise."
    shown = changes.drop(columns=["index", "p"]).copy()
    shown["commits"] = [f"{str(a)[:SHORT] or '?'}..{str(b)[:SHORT] or '?'}" for a, b in
                        zip(shown.pop("before_commit"), shown.pop("after_commit"))]
    shown["interval"] = [f"{lo:.3f}-{hi:.3f}" for lo, hi in zip(shown.pop("low"), shown.pop("high"))]
    for column in ("before_median", "after_median"):
        shown[column] = shown[column].map(number)
    shown["ratio"] = shown["ratio"].map(lambda v: f"{v:.3f}")
    order = ["hardware", "case", "metric", "commits", "before_median", "after_median", "ratio", "interval",
             "direction", "commits_before", "commits_after", "env_differs"]
    return shown[order].to_markdown(index=False)

"""The speed-regression gate: pytest-benchmark JSON of a baseline against the current run.

pytest-benchmark's own `--benchmark-compare-fail=mean:10%` compares two means and cries wolf on a
noisy machine (it has no statistical test). Here a case **fails** only when its rounds are
slower than the baseline's beyond `threshold` (median ratio > 1 + threshold, default 10 %) **and**
a one-sided Mann-Whitney U test on the raw rounds gives p < `alpha` (default 0.002, asv's
choice) with the bootstrap interval of the ratio excluding 1. Fewer than `min_rounds` rounds a
side (default 6: the fewest with which p can go below 0.002) is "inconclusive", never a pass or
a fail. A slowdown the rounds prove but under the threshold is "slower-within-threshold": it
passes, and the table says so rather than calling it "same". reports/stats.py states the rules.

The JSON must carry the raw rounds (`--benchmark-json PATH` writes them; a `--benchmark-save`
file needs `--benchmark-save-data`). Each case records its hardware key in extra_info
(tests/test_benchmarks.py): a baseline from other hardware is never a pass/fail reference.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from reports.stats import INCONCLUSIVE, SLOWER, compare_samples

THRESHOLD, ALPHA, MIN_ROUNDS = 0.10, 0.002, 6


class GateError(ValueError):
    """Bad gate input; its message is the one-line error the user sees."""


def baseline_key(hardware: str, driver: str = "", power_limit_w: float | None = None) -> str:
    """Folder name of a hardware's baselines: GPU model, driver and power limit (not the OS)."""
    parts = [hardware or "unknown"]
    if driver:
        parts.append(f"driver{driver}")
    if power_limit_w:
        parts.append(f"{power_limit_w:.0f}w")
    return "-".join(parts)


def load_benchmarks(path: str | Path) -> dict:
    """{"hardware": key, "commit": id, "cases": {fullname: rounds in seconds}} from one JSON file."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise GateError(f"{path}: not a readable pytest-benchmark JSON ({error})") from None
    benchmarks = doc.get("benchmarks") if isinstance(doc, dict) else None
    if not benchmarks:
        raise GateError(f"{path}: no benchmarks (expected pytest-benchmark JSON from --benchmark-json)")
    cases = {}
    for bench in benchmarks:
        if "data" not in bench.get("stats", {}):
            raise GateError(f"{path}: {bench.get('fullname')} has no raw rounds (record with --benchmark-json, "
                            "or --benchmark-save-data)")
        cases[bench["fullname"]] = np.asarray(bench["stats"]["data"], dtype=float)
    return {"hardware": hardware_of(path, benchmarks), "commit": doc.get("commit_info", {}).get("id", ""),
            "cases": cases}


def hardware_of(path: Path, benchmarks: list[dict]) -> str:
    """The one hardware key every case carries: a case without one, or cases of several keys, could
    be gated against another machine's baseline (or filed under a made-up key), so both are errors."""
    unkeyed = [b.get("fullname") for b in benchmarks if not (b.get("extra_info") or {}).get("hardware_key")]
    if unkeyed:
        raise GateError(f"{path}: {len(unkeyed)} of {len(benchmarks)} cases have no extra_info.hardware_key, e.g. "
                        f"{unkeyed[0]} (record with tests/test_benchmarks.py, which writes it)")
    keys = sorted({b["extra_info"]["hardware_key"] for b in benchmarks})
    if len(keys) > 1:
        raise GateError(f"{path}: cases from several hardware keys ({', '.join(keys)}); gate one machine's run")
    return keys[0]


def judge(baseline: dict, current: dict, threshold: float = THRESHOLD, alpha: float = ALPHA,
          min_rounds: int = MIN_ROUNDS) -> pd.DataFrame:
    """One row per case in either file; only cases in both get a verdict."""
    rows = []
    for case in list(dict.fromkeys([*baseline, *current])):
        if case not in baseline or case not in current:
            rows.append({"case": case, "verdict": "new" if case in current else "missing", "fails": False})
            continue
        v = compare_samples(baseline[case], current[case], higher_is_better=False, alpha=alpha, margin=threshold,
                            threshold=threshold, min_samples=min_rounds, one_sided=True, centre=np.median)
        rows.append({"case": case, "baseline_ms": 1000 * np.median(baseline[case]),
                     "current_ms": 1000 * np.median(current[case]), "ratio": v.ratio, "low": v.low, "high": v.high,
                     "p": v.p, "rounds": f"{v.n_a}/{v.n_b}", "verdict": v.verdict, "reason": v.reason,
                     "fails": v.verdict == SLOWER})
    return pd.DataFrame(rows)


def suspects(table: pd.DataFrame, threshold: float = THRESHOLD) -> list[str]:
    """Cases worth a confirming rerun: called slower, or inconclusive with a ratio past the threshold."""
    if "ratio" not in table:
        return []
    maybe = (table["verdict"] == SLOWER) | ((table["verdict"] == INCONCLUSIVE) & (table["ratio"] > 1 + threshold))
    return list(table.loc[maybe, "case"])


def geometric_mean(table: pd.DataFrame) -> float:
    """Geometric mean of current/baseline over the cases present in both files."""
    ratios = table["ratio"].dropna() if "ratio" in table else pd.Series(dtype=float)
    return float(scipy_stats.gmean(ratios)) if len(ratios) else float("nan")


def render(table: pd.DataFrame, title: str) -> str:
    """Markdown for the terminal and the CI job summary."""
    shown = table.drop(columns="fails").copy()
    for column, fmt in {"baseline_ms": "{:.3f}", "current_ms": "{:.3f}", "ratio": "{:.3f}", "p": "{:.2g}"}.items():
        if column in shown:
            shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else fmt.format(v))
    if "low" in shown:
        shown["interval"] = [("" if pd.isna(lo) else f"{lo:.3f}-{hi:.3f}") for lo, hi in zip(shown.pop("low"),
                                                                                             shown.pop("high"))]
    return f"### {title}\n\n" + shown.fillna("").to_markdown(index=False) + \
        f"\n\nGeometric mean of time ratios (cases in both): {geometric_mean(table):.3f}\n"

"""Runs side by side: environments, per-variant ratios to the first run with verdicts, and a
leaderboard (one table per metric, a column per hardware).

Runs are joined on the variant name. Training throughput gets a verdict from its per-epoch
steady windows in curves.csv (reports/stats.py states the rules); the other metrics are one
value per run, so their ratio is shown without a verdict ("inconclusive: one value per run").
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from reports.results import CURVES, ENV, INFERENCE, READABLE_VERSIONS, RESULTS, read_env, read_table
from reports.stats import INCONCLUSIVE, compare_samples

# column -> (label, higher is better)
METRICS = {
    "train_samples_per_s": ("train samples/s", True),
    "infer_samples_per_s": ("infer samples/s", True),
    "step_ms_p50": ("step ms p50", False),
    "step_ms_p99": ("step ms p99", False),
    "peak_mem_mb": ("peak mem MB", False),
    "samples_per_j": ("samples/J", True),
    "accuracy": ("accuracy %", True),
    "time_to_target_s": ("time to target s", False),
}
# label -> env.json key; the software ones make a ratio compare more than hardware
ENV_FIELDS = {"hardware": "hardware", "GPU": "gpu_name", "driver": "driver", "CUDA": "cuda", "torch": "torch",
              "DALI": "dali", "Python": "python", "power limit W": "power_limit_w",
              "max SM clock MHz": "sm_clock_max_mhz", "CPU": "cpu_model", "CPU cores": "cpu_cores"}
SOFTWARE = ("driver", "CUDA", "torch", "DALI", "Python")


class CompareError(ValueError):
    """Bad input for compare; its message is the one-line error the user sees."""


@dataclass
class Run:
    label: str
    path: Path
    env: dict
    results: pd.DataFrame  # status ok rows, one per variant and training seed
    curves: pd.DataFrame

    def throttled(self, variant: str) -> bool:
        row = self.results.loc[self.results["variant"] == variant]
        return bool(len(row)) and "throttled" in row and (row["throttled"].astype(str).str.lower() == "true").any()

    def windows(self, variant: str) -> np.ndarray:
        """Per-epoch steady-state training throughput of every repeat: the samples a verdict needs."""
        if self.curves.empty or "train_samples_per_s" not in self.curves:
            return np.array([])
        return self.curves.loc[self.curves["variant"] == variant, "train_samples_per_s"].dropna().to_numpy(float)


def load_run(path: str | Path) -> Run:
    path = Path(path)
    if not (path / RESULTS).is_file() or not (path / ENV).is_file():
        raise CompareError(f"{path}: not a run directory (expected {RESULTS} and {ENV})")
    env = read_env(path)
    version = env.get("schema_version", 1)
    if version not in READABLE_VERSIONS:
        raise CompareError(f"{path / ENV}: schema_version {version}, this fusionbench reads "
                           f"{', '.join(map(str, READABLE_VERSIONS))}")
    results = read_table(path / RESULTS)
    if "variant" not in results or "status" not in results:
        raise CompareError(f"{path / RESULTS}: expected the columns variant and status")
    results = results[results["status"] == "ok"].reset_index(drop=True)
    inference = read_table(path / INFERENCE, key=None)
    if not inference.empty and "infer_samples_per_s" not in results:  # older rows: take the largest batch
        best = inference.groupby("variant")["samples_per_s"].max()
        results["infer_samples_per_s"] = results["variant"].map(best)
    return Run(env.get("hardware") or path.name, path, env, results, read_table(path / CURVES, key=None))


def load_runs(paths: list) -> list[Run]:
    """Runs with unique labels (the hardware key, plus the folder where two share hardware)."""
    if len(paths) < 2:
        raise CompareError("compare needs at least two run directories")
    runs = [load_run(p) for p in paths]
    labels = [r.label for r in runs]
    for run in runs:
        if labels.count(run.label) > 1:
            run.label = f"{run.label}/{run.path.name}"
    if len({r.label for r in runs}) < len(runs):
        raise CompareError("two run directories have the same hardware and folder name; rename one")
    presence = variant_presence(runs).drop(columns="variant")
    if not (presence.sum(axis=1) > 1).any():
        raise CompareError("the runs have no variant in common (compare joins them on the variant name)")
    return runs


def variant_presence(runs: list[Run]) -> pd.DataFrame:
    """Every variant of any run, with where it is present; none is dropped."""
    names = list(dict.fromkeys(v for r in runs for v in r.results["variant"]))
    return pd.DataFrame({"variant": names, **{r.label: [v in set(r.results["variant"]) for v in names] for r in runs}})


def compare_table(runs: list[Run], **rules) -> pd.DataFrame:
    """Long table: variant, metric, run, value, ratio to the first run, interval, p and verdict."""
    first, rows = runs[0], []
    for variant in variant_presence(runs)["variant"]:
        for metric, (_, higher) in METRICS.items():
            base = _value(first, variant, metric)
            for run in runs:
                value = _value(run, variant, metric)
                row = {"variant": variant, "metric": metric, "run": run.label, "value": value,
                       "ratio": value / base if base and not np.isnan(base) else np.nan}
                if run is not first:
                    row.update(_verdict(first, run, variant, metric, higher, row["ratio"], rules))
                rows.append(row)
    return pd.DataFrame(rows)


def _value(run: Run, variant: str, metric: str) -> float:
    """The variant's metric, the mean over its training seeds when the run has several."""
    rows = run.results.loc[run.results["variant"] == variant]
    if rows.empty or metric not in rows:
        return np.nan
    return float(pd.to_numeric(rows[metric], errors="coerce").mean())


def _verdict(first: Run, run: Run, variant: str, metric: str, higher: bool, ratio: float, rules: dict) -> dict:
    if np.isnan(ratio):
        return {"verdict": INCONCLUSIVE, "reason": "missing in one run"}
    if metric != "train_samples_per_s":
        return {"verdict": INCONCLUSIVE, "reason": "one value per run"}
    result = compare_samples(first.windows(variant), run.windows(variant), higher_is_better=True,
                             throttled=first.throttled(variant) or run.throttled(variant), **rules)
    return {"low": result.low, "high": result.high, "p": result.p, "samples": f"{result.n_a}/{result.n_b}",
            "verdict": result.verdict, "reason": result.reason}


def leaderboard(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One metric, a row per variant and a column per run (hardware), in the runs' order."""
    rows = table[table["metric"] == metric]
    return rows.pivot(index="variant", columns="run", values="value").reindex(
        index=list(dict.fromkeys(rows["variant"])), columns=list(dict.fromkeys(rows["run"])))


def environment_table(runs: list[Run]) -> pd.DataFrame:
    """Hardware and software of each run side by side; the clock falls back to the rows' mean."""
    table = {}
    for run in runs:
        env = dict(run.env)
        if not env.get("sm_clock_max_mhz") and "sm_clock_mhz_mean" in run.results:
            clocks = pd.to_numeric(run.results["sm_clock_mhz_mean"], errors="coerce").dropna()
            env["sm_clock_max_mhz"] = f"{clocks.mean():.0f} (mean while training)" if len(clocks) else ""
        table[run.label] = [str(env.get(key, "")) or "n/a" for key in ENV_FIELDS.values()]
    return pd.DataFrame(table, index=list(ENV_FIELDS))


def differences(env_table: pd.DataFrame) -> list[str]:
    """The environment fields whose values differ between the runs."""
    return [field for field, values in env_table.iterrows() if values.nunique() > 1 and field != "hardware"]


def _number(value) -> str:
    return "n/a" if pd.isna(value) else f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"


def metric_section(table: pd.DataFrame, metric: str) -> str:
    """A leaderboard table with each run's ratio to the first run beside it."""
    board = leaderboard(table, metric)
    if board.isna().all().all():
        return ""
    shown = board.map(_number)
    for run in board.columns[1:]:
        shown[f"{run} ratio"] = (board[run] / board.iloc[:, 0]).map(
            lambda r: "n/a" if pd.isna(r) else f"{r:.2f}x")
    return f"### {METRICS[metric][0]}\n\n" + shown.to_markdown()


def verdict_section(table: pd.DataFrame, level: float) -> str:
    rows = table[(table["metric"] == "train_samples_per_s") & table["verdict"].notna() & table["ratio"].notna()].copy()
    if rows.empty:
        return "No variant with training throughput in the first run and another."
    rows["ratio"] = rows["ratio"].map(lambda r: "n/a" if pd.isna(r) else f"{r:.3f}")
    rows[f"{level:.0%} interval"] = [("n/a" if pd.isna(lo) else f"{lo:.3f}-{hi:.3f}")
                                     for lo, hi in zip(rows["low"], rows["high"])]
    rows["p"] = rows["p"].map(lambda p: "n/a" if pd.isna(p) else f"{p:.2g}")
    return rows[["variant", "run", "ratio", f"{level:.0%} interval", "p", "samples", "verdict", "reason"]] \
        .fillna("").to_markdown(index=False)


def rules_text(level: float, alpha: float, margin: float, min_samples: int) -> str:
    return (f"Verdicts compare each run's per-epoch steady-state training throughput (curves.csv) with the "
            f"first run's: ratio of means with a {level:.0%} bootstrap interval and a two-sided Mann-Whitney U "
            f"test. **faster/slower**: p < {alpha:g} and the interval excludes 1. **same**: the whole "
            f"interval within ±{margin:.0%} (1/{1 + margin:g} to {1 + margin:g}). **inconclusive**: fewer "
            f"than {min_samples} epochs on a side, a run flagged as throttled, or neither rule holds.")


def write_compare(runs: list[Run], out: str | Path, level: float = 0.99, alpha: float = 0.01,
                  margin: float = 0.05, min_samples: int = 5) -> list[Path]:
    """compare.md, compare.csv and plots/compare.png in `out`; returns the paths written."""
    from reports.plots import plot_leaderboard
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = compare_table(runs, level=level, alpha=alpha, margin=margin, min_samples=min_samples)
    table.to_csv(out / "compare.csv", index=False)
    env = environment_table(runs)
    differ = differences(env)
    lines = ["# fusionbench compare", "", "Ratios are to the first run, "
             f"`{runs[0].label}` ({runs[0].path}). Runs: " + ", ".join(f"`{r.label}` ({r.path})" for r in runs) + ".",
             "", "## Environments", "", env.to_markdown(), ""]
    software = [f for f in differ if f in SOFTWARE]
    if software:
        lines += [f"> **Warning:** software differs ({', '.join(software)}): the ratios compare hardware "
                  "and software together, not hardware alone.", ""]
    lines += ["## What differs", ""]
    lines += [f"- {f}: " + " vs ".join(f"`{v}`" for v in env.loc[f]) for f in differ] or ["- nothing recorded"]
    lines += ["", "## Training throughput verdicts", "", rules_text(level, alpha, margin, min_samples), "",
              verdict_section(table, level), "", "## Leaderboard", "",
              f"One table per metric, a column per run and the ratio of each to `{runs[0].label}`. Metrics "
              "other than training throughput are one value per run: their ratios carry no verdict.", ""]
    lines += [section + "\n" for section in (metric_section(table, m) for m in METRICS) if section]
    presence = variant_presence(runs)
    partial = presence[~presence.drop(columns="variant").all(axis=1)]
    if not partial.empty:
        lines += ["## Variants in only some runs", "",
                  partial.replace({True: "yes", False: "-"}).to_markdown(index=False), ""]
    (out / "compare.md").write_text("\n".join(lines) + "\n")
    plot = plot_leaderboard(leaderboard(table, "train_samples_per_s"), METRICS["train_samples_per_s"][0],
                            out / "plots" / "compare.png")
    return [out / "compare.md", out / "compare.csv", plot]

"""Runs side by side: environments, per-variant ratios to the first run with verdicts, and a
leaderboard (one table per metric, a column per hardware).

Runs are joined on the variant name. Training throughput gets a verdict from its per-epoch
steady windows in curves.csv, or, where a side has too few epochs, from its per-step times in
steps.csv with a block bootstrap (reports/stats.py states the rules); the other metrics are one
value per run, so their ratio is shown without a verdict ("inconclusive: one value per run").
With prices per hardware key (reports/cost.py) the leaderboard adds dollars per million
training samples and per network trained to the target, beside joules per sample.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from reports.cost import cost_columns
from reports.results import CURVES, ENV, INFERENCE, READABLE_VERSIONS, RESULTS, STEPS, read_env, read_table
from reports.stats import INCONCLUSIVE, compare_samples, compare_series

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
    "j_per_sample": ("J per train sample", False),
    "usd_per_million_samples": ("$ per 1M train samples", False),
    "usd_per_trained_network": ("$ per network trained to target", False),
}
# label -> env.json key; the software ones make a ratio compare more than hardware
ENV_FIELDS = {"hardware": "hardware", "GPU": "gpu_name", "driver": "driver", "CUDA": "cuda", "torch": "torch",
              "DALI": "dali", "Python": "python", "power limit W": "power_limit_w",
              "max SM clock MHz": "sm_clock_max_mhz", "CPU": "cpu_model", "CPU cores": "cpu_cores",
              "intra-op threads": "threads.intra_op"}
SOFTWARE_KEYS = ("driver", "cuda", "cudnn", "torch", "torchvision", "triton", "dali", "python")
# env.json fields that name or measure one run rather than set up its machine: never "what differs"
PER_RUN = ("command", "data", "split", "hardware", "idle_power_w", "nvml_overhead", "schema_version")


class CompareError(ValueError):
    """Bad input for compare; its message is the one-line error the user sees."""


@dataclass
class Run:
    label: str
    path: Path
    env: dict
    results: pd.DataFrame  # status ok rows, one per variant and training seed
    curves: pd.DataFrame
    steps: pd.DataFrame  # timed steps in run order (steps.csv; empty for runs made before it)

    def throttled(self, variant: str) -> bool:
        row = self.results.loc[self.results["variant"] == variant]
        return bool(len(row)) and "throttled" in row and (row["throttled"].astype(str).str.lower() == "true").any()

    def windows(self, variant: str) -> np.ndarray:
        """Per-epoch steady-state training throughput of every repeat: the samples a verdict needs."""
        if self.curves.empty or "train_samples_per_s" not in self.curves:
            return np.array([])
        return self.curves.loc[self.curves["variant"] == variant, "train_samples_per_s"].dropna().to_numpy(float)

    def step_ms(self, variant: str) -> np.ndarray:
        """Per-step training times (data + compute, ms) of every seed and repeat, in run order."""
        if self.steps.empty:
            return np.array([])
        rows = self.steps[self.steps["variant"] == variant]
        rows = rows.sort_values([k for k in ("seed", "world_size", "repeat", "step") if k in rows], kind="stable")
        return (rows["data_ms"] + rows["compute_ms"]).to_numpy(float)


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
    return Run(env.get("hardware") or path.name, path, env, results, read_table(path / CURVES, key=None),
               read_table(path / STEPS, key=None))


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
    rules = dict(rules)
    min_steps = rules.pop("min_steps", 30)
    throttled = first.throttled(variant) or run.throttled(variant)
    windows_a, windows_b = first.windows(variant), run.windows(variant)
    steps_a, steps_b = first.step_ms(variant), run.step_ms(variant)
    if min(len(windows_a), len(windows_b)) >= rules.get("min_samples", 5) or not (len(steps_a) and len(steps_b)):
        result = compare_samples(windows_a, windows_b, higher_is_better=True, throttled=throttled, **rules)
        no_steps = "; no per-step times (steps.csv) in a run to fall back on" if result.reason.startswith("too few") else ""
        return _verdict_columns(result, "epochs", no_steps)
    rules["min_samples"] = min_steps  # too few epochs: per-step times; throughput is batch / mean step time
    result = compare_series(steps_a, steps_b, higher_is_better=True, centre=lambda ms: 1 / np.mean(ms),
                            throttled=throttled, **rules)
    return _verdict_columns(result, "steps")


def _verdict_columns(result, method: str, note: str = "") -> dict:
    return {"low": result.low, "high": result.high, "p": result.p, "samples": f"{result.n_a}/{result.n_b}",
            "method": method, "verdict": result.verdict, "reason": result.reason + note}


def add_costs(runs: list[Run], prices: dict[str, float]) -> list[str]:
    """Adds the cost columns (and joules per sample) to each run's rows, priced by its hardware
    key; returns the hardware keys that have no price."""
    unpriced = []
    for run in runs:
        key = run.env.get("hardware", "")
        price = prices.get(key, np.nan)
        if key not in prices:
            unpriced.append(key or run.label)
        costs = [cost_columns(speed, to_target, price) for speed, to_target in
                 zip(_numbers(run.results, "train_samples_per_s"), _numbers(run.results, "time_to_target_s"))]
        for name in ("usd_per_million_samples", "usd_per_trained_network"):
            run.results[name] = [cost[name] for cost in costs]
    return list(dict.fromkeys(unpriced))


def _numbers(rows: pd.DataFrame, column: str) -> pd.Series:
    """A column as floats, NaN where empty or where the run has no such column."""
    if column not in rows:
        return pd.Series(np.nan, index=rows.index)
    return pd.to_numeric(rows[column], errors="coerce")


def add_joules_per_sample(runs: list[Run]) -> None:
    """J per training sample where NVML measured samples per joule (NaN otherwise)."""
    for run in runs:
        per_j = _numbers(run.results, "samples_per_j")
        run.results["j_per_sample"] = 1 / per_j.where(per_j > 0)


def leaderboard(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One metric, a row per variant and a column per run (hardware), in the runs' order."""
    rows = table[table["metric"] == metric]
    return rows.pivot(index="variant", columns="run", values="value").reindex(
        index=list(dict.fromkeys(rows["variant"])), columns=list(dict.fromkeys(rows["run"])))


def environment_table(runs: list[Run]) -> pd.DataFrame:
    """Hardware and software of each run side by side; the clock falls back to the rows' mean."""
    table = {}
    for run in runs:
        env = flat_env(run.env)
        if not env.get("sm_clock_max_mhz") and "sm_clock_mhz_mean" in run.results:
            clocks = pd.to_numeric(run.results["sm_clock_mhz_mean"], errors="coerce").dropna()
            env["sm_clock_max_mhz"] = f"{clocks.mean():.0f} (mean while training)" if len(clocks) else ""
        table[run.label] = [str(env.get(key, "")) or "n/a" for key in ENV_FIELDS.values()]
    return pd.DataFrame(table, index=list(ENV_FIELDS))


def flat_env(env: dict, prefix: str = "") -> dict:
    """env.json as one level, nested keys joined with dots ("threads.intra_op")."""
    flat = {}
    for key, value in env.items():
        if isinstance(value, dict):
            flat.update(flat_env(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def env_differences(runs: list[Run]) -> tuple[dict[str, list], list[str]]:
    """({field: each run's value} for every env.json field two runs recorded differently,
    fields some runs did not record at all). Generic: any field added to env.json is covered."""
    flats = [flat_env({k: v for k, v in run.env.items() if k not in PER_RUN}) for run in runs]
    fields = list(dict.fromkeys(key for flat in flats for key in flat))
    differ, partial = {}, []
    for field in fields:
        values = [flat.get(field) for flat in flats]
        recorded = {json_text(v) for v in values if v is not None}
        if len(recorded) > 1:
            differ[field] = values
        elif None in values:
            partial.append(field)
    return differ, partial


def json_text(value) -> str:
    return "" if value is None else str(value)


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
    if "method" not in rows:
        rows["method"] = ""
    return rows[["variant", "run", "ratio", f"{level:.0%} interval", "p", "samples", "method", "verdict", "reason"]] \
        .fillna("").to_markdown(index=False)


def rules_text(level: float, alpha: float, margin: float, min_samples: int, min_steps: int = 30) -> str:
    return (f"Verdicts compare each run's per-epoch steady-state training throughput (curves.csv) with the "
            f"first run's: ratio of means with a {level:.0%} bootstrap interval and a two-sided Mann-Whitney U "
            f"test (method `epochs`). Where a side has fewer than {min_samples} epochs, its per-step times "
            f"(steps.csv) are compared instead: throughput as batch / mean step time, the interval and p from a "
            f"circular block bootstrap that keeps neighbouring steps together (method `steps`, at least "
            f"{min_steps} steps a side). **faster/slower**: p < {alpha:g} and the interval excludes 1. "
            f"**same**: the whole interval within ±{margin:.0%} (1/{1 + margin:g} to {1 + margin:g}). "
            f"**inconclusive**: too few samples, a run flagged as throttled, or neither rule holds.")


def differences_lines(runs: list[Run]) -> list[str]:
    """'What differs': every env.json field two runs recorded differently, the software warning
    first, then the fields only some runs recorded (older runs record less)."""
    differ, partial = env_differences(runs)
    lines = []
    software = [f for f in differ if f in SOFTWARE_KEYS]
    if software:
        lines += [f"> **Warning:** software differs ({', '.join(software)}): the ratios compare hardware "
                  "and software together, not hardware alone.", ""]
    lines += [f"- {f}: " + " vs ".join(f"`{json_text(v) or 'n/a'}`" if v is not None else "not recorded"
                                       for v in values) for f, values in differ.items()] or ["- no recorded field differs"]
    if partial:
        lines += ["", f"Recorded by only some runs (same value where recorded): {', '.join(partial)}."]
    return lines


def write_compare(runs: list[Run], out: str | Path, level: float = 0.99, alpha: float = 0.01,
                  margin: float = 0.05, min_samples: int = 5, min_steps: int = 30,
                  prices: dict[str, float] | None = None) -> list[Path]:
    """compare.md, compare.csv and plots/compare.png in `out`; returns the paths written."""
    from reports.plots import plot_leaderboard
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    add_joules_per_sample(runs)
    unpriced = add_costs(runs, prices) if prices else []
    table = compare_table(runs, level=level, alpha=alpha, margin=margin, min_samples=min_samples, min_steps=min_steps)
    table.to_csv(out / "compare.csv", index=False)
    env = environment_table(runs)
    lines = ["# fusionbench compare", "", "Ratios are to the first run, "
             f"`{runs[0].label}` ({runs[0].path}). Runs: " + ", ".join(f"`{r.label}` ({r.path})" for r in runs) + ".",
             "", "## Environments", "", env.to_markdown(), "", "## What differs", "", *differences_lines(runs)]
    lines += ["", "## Training throughput verdicts", "", rules_text(level, alpha, margin, min_samples, min_steps), "",
              verdict_section(table, level), "", "## Leaderboard", "",
              f"One table per metric, a column per run and the ratio of each to `{runs[0].label}`. Metrics "
              "other than training throughput are one value per run: their ratios carry no verdict.", ""]
    if prices:
        lines += ["Cost at " + ", ".join(f"`{k}` ${v:g}/h" for k, v in prices.items()) + ": dollars per million "
                  "training samples (price / train samples/s) and per network trained to the target accuracy "
                  "(price x time to target; n/a where the target was not reached)"
                  + (f"; no price for {', '.join(f'`{k}`' for k in unpriced)}" if unpriced else "") + ".", ""]
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

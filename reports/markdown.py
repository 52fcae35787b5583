"""report.md from the files a run wrote, so `bench report` can rebuild it at any time."""

from pathlib import Path

import pandas as pd

from reports.intervals import seeds_section
from reports.results import CURVES, INFERENCE, RESULTS, read_env, read_table
from reports.robustness_report import ROBUSTNESS, robustness_section

MEMORY_LABELS = {"cuda_max_allocated": "peak mem MB (CUDA max allocated)", "process_peak_rss": "peak mem MB (process peak RSS)"}


def _fmt(table: pd.DataFrame, digits: dict) -> pd.DataFrame:
    """Rounded numbers; empty cells read n/a so a missing metric is never mistaken for 0."""
    out = table.astype(object)
    for column, places in digits.items():
        if column in out:
            out[column] = out[column].map(lambda v: "n/a" if pd.isna(v) or v == "" else f"{float(v):,.{places}f}")
    return out.fillna("n/a")


def seed_table(ok: pd.DataFrame) -> str:
    """The seed study's columns, one row per variant; memory labelled with what it measured."""
    parts = []
    for kind, group in ok.groupby("peak_mem_kind", sort=False):
        table = group[["variant", *(["seed"] if _several(ok, "seed") else []), "epochs", "val_loss", "accuracy", "params", "sec_per_epoch", "peak_mem_mb"]].rename(
            columns={"accuracy": "accuracy %", "sec_per_epoch": "sec/epoch", "peak_mem_mb": MEMORY_LABELS.get(kind, kind)})
        table = _fmt(table, {"val_loss": 6, "accuracy %": 2, "params": 0, "sec/epoch": 2, MEMORY_LABELS.get(kind, kind): 1})
        parts.append(table.to_markdown(index=False))
    return "\n\n".join(parts)


def efficiency_cells(ok: pd.DataFrame) -> pd.Series:
    """Harness efficiency with its 95 % interval ("1.02 (0.97-1.08)"), flagged "!" above 1; the
    ratio alone where the run has no interval (one window, or a run written before intervals)."""
    ratio = pd.to_numeric(ok.get("harness_efficiency", pd.Series(float("nan"), index=ok.index)), errors="coerce")
    low = pd.to_numeric(ok.get("harness_efficiency_ci95_low", pd.Series(float("nan"), index=ok.index)), errors="coerce")
    high = pd.to_numeric(ok.get("harness_efficiency_ci95_high", pd.Series(float("nan"), index=ok.index)), errors="coerce")

    def cell(r, lo, hi):
        if pd.isna(r):
            return "n/a"
        text = f"{r:.2f}" + ("" if pd.isna(lo) else f" ({lo:.2f}-{hi:.2f})")
        return text + (" !" if r > 1 else "")
    return pd.Series([cell(*v) for v in zip(ratio, low, high)], index=ok.index)


def efficiency_note(ok: pd.DataFrame) -> str:
    """What the efficiency column's intervals and flags mean, naming the rows they concern."""
    ratio = pd.to_numeric(ok.get("harness_efficiency", pd.Series(dtype=float)), errors="coerce")
    if ratio.isna().all():
        return ""
    lines = ["Harness efficiency: the row's samples/s over the plain loop's mean, with the 95 % interval from the "
             "spread of the row's steady windows (epochs, or repeats) and of the plain loop's rounds."]
    above = ok.loc[ratio > 1, "variant"].tolist()
    if above:
        lines.append(f"! Above 1 ({', '.join(above)}) is a measurement problem, not a harness faster than plain "
                     "PyTorch: the plain loop does less per step, so the two were timed under different conditions "
                     "(a shared or throttling machine, too few steps) and neither figure is to be trusted as it is.")
    resolved = ok.get("harness_efficiency_resolved")
    if resolved is not None:
        unresolved = ok.loc[ratio.notna() & ~resolved.astype("boolean").fillna(False).astype(bool), "variant"].tolist()
        if unresolved:
            lines.append(f"Not resolved to 0.05 (interval wider, or none with a single window): {', '.join(unresolved)}.")
    return " ".join(lines)


def quick_note(first: pd.Series) -> str:
    """The quick profile checks the pipeline; the seed's accuracy needs the seed's job."""
    epochs = int(first["epochs"])
    return (f"Profile quick: this run checks that every part of the pipeline works on this machine. It does not "
            f"converge ({epochs} epoch{'s' * (epochs != 1)} of {int(first['train_samples']):,} samples at the seed's lr 1e-4), "
            "so its accuracies say nothing about the networks. The seed's accuracy comes from the seed's job: "
            "`python -m bench all --profile seed` (all data, 20 epochs, batch 32; on a CPU add `--loader resident` "
            "so the cores train rather than decode PNGs).")


def speed_table(ok: pd.DataFrame) -> str:
    table = pd.DataFrame({
        "variant": ok["variant"],
        "loader": [loader if loader == form else f"{loader} ({form})" for loader, form in zip(ok["loader"], ok["loader_form"])],
        "train samples/s": ok["train_samples_per_s"],
        "± std": ok["train_samples_per_s_std"],
        "plain loop samples/s": ok.get("reference_samples_per_s"),
        "harness efficiency (95 % interval)": efficiency_cells(ok),
        "step ms p50": ok["step_ms_p50"],
        "p90": ok["step_ms_p90"],
        "p99": ok["step_ms_p99"],
        "data wait %": 100 * ok["data_wait_share"],
        "compile s": ok["compile_s"],
        "infer samples/s": ok["infer_samples_per_s"],
        f"time to {ok['target_acc'].iloc[0]:g}% s": ok["time_to_target_s"],
        "MFU %": 100 * pd.to_numeric(ok["mfu"], errors="coerce"),
    })
    digits = {c: 1 for c in table.columns if c not in ("variant", "loader")}
    digits.pop("harness efficiency (95 % interval)")
    digits.update({"train samples/s": 0, "plain loop samples/s": 0, "infer samples/s": 0,
                   "step ms p50": 2, "p90": 2, "p99": 2, "MFU %": 2})
    return _fmt(table, digits).to_markdown(index=False)


def compiler_table(ok: pd.DataFrame) -> str:
    compiled = ok[ok["compile_mode"] != "none"]
    if compiled.empty:
        return ""
    table = compiled[["variant", "compile_s", "compiled_graphs", "graph_breaks", "recompiles_timed", "suspect"]]
    return _fmt(table, {"compile_s": 1}).to_markdown(index=False)


def notes_table(ok: pd.DataFrame) -> str:
    """The rows that used a Triton kernel or carry a note (e.g. a step capture that fell back)."""
    columns = [c for c in ("kernels", "note") if c in ok]
    if not columns:
        return ""
    text = ok[columns].astype("string").fillna("")  # empty cells read back from the CSV as NaN
    marked = text.ne("").any(axis=1)
    return "" if not marked.any() else ok.loc[marked, ["variant"]].join(text[marked]).to_markdown(index=False)


ENERGY_WINDOWS = ("Windows: GPU util, power, energy J, above idle and samples/J cover the timed steady training "
                  "steps only (warm-up and validation excluded); compile J is the warm-up steps, where a compiled "
                  "model compiles (its eval graph compiles in the first validation); validation J is every "
                  "evaluation; phase J is the whole training phase (all of them); J to target counts from the "
                  "start of training, like the time to target. With several processes, energy and power are "
                  "summed over every GPU of the node the run used.")


def energy_table(ok: pd.DataFrame) -> str:
    if "energy_j" not in ok or ok["energy_j"].isna().all():
        notes = sorted({str(n) for n in ok.get("nvml_note", pd.Series(dtype=str)).dropna() if str(n)})
        return "NVML metrics: n/a (" + ("; ".join(notes) or "not sampled") + ")."
    columns = {"variant": "variant", "gpu_util_mean": "GPU util %", "power_w_mean": "power W", "power_w_max": "max W",
               "energy_j": "energy J", "energy_above_idle_j": "above idle J", "samples_per_j": "samples/J",
               "compile_energy_j": "compile J", "val_energy_j": "validation J", "phase_energy_j": "phase J",
               "j_to_target": "J to target", "energy_source": "source", "throttled_share": "throttled",
               "nvml_mem_peak_mb": "NVML mem MB"}
    table = ok[[c for c in columns if c in ok]].rename(columns=columns)
    digits = {name: 0 for name in table.columns if name not in ("variant", "source", "samples/J", "throttled")}
    table = _fmt(table, {**digits, "samples/J": 1, "throttled": 2}).to_markdown(index=False)
    windows = ENERGY_WINDOWS if "phase_energy_j" in ok else "Windows: every figure covers the whole training phase."
    return windows + "\n\n" + table


def seed_pipeline_table(ok: pd.DataFrame) -> str:
    """Each variant's training samples/s over the seed's own pipeline (torch DataLoader, fp32,
    eager, contiguous, seed widths) of the same network and batch size, where the run measured it."""
    seed = ok[(ok["loader"] == "torch") & (ok["precision"] == "fp32") & (ok["compile_mode"] == "none")
              & (ok["memory_format"] == "contiguous") & (ok.get("channels", "seed") == "seed")]
    if seed.empty or len(seed) == len(ok):
        return ""
    key = ["arch", "downsample", "batch_size"] + [k for k in ("seed", "world_size") if k in ok]
    base = seed[key + ["train_samples_per_s"]].drop_duplicates(key).rename(columns={"train_samples_per_s": "pipeline"})
    rows = ok.merge(base, on=key)
    table = pd.DataFrame({"variant": rows["variant"], "loader": rows["loader"],
                          "train samples/s": rows["train_samples_per_s"],
                          "speed-up over the seed's pipeline": rows["train_samples_per_s"] / rows["pipeline"],
                          "data wait %": 100 * rows["data_wait_share"]})
    return _fmt(table, {"train samples/s": 0, "speed-up over the seed's pipeline": 2, "data wait %": 1}).to_markdown(index=False)


def nvml_overhead_line(env: dict) -> str:
    """The sampler's overhead with its 95 % interval, saying so when it did not resolve."""
    o = env["nvml_overhead"]
    if "rounds" not in o:  # runs before the overhead had an interval
        return (f"NVML sampler: idle power {env.get('idle_power_w', float('nan')):.0f} W; its overhead on training "
                f"throughput, measured once without an interval: {o['overhead_pct']:.2f} %.")
    line = (f"NVML sampler: idle power {env.get('idle_power_w', float('nan')):.0f} W; its overhead on training "
            f"throughput: {o['overhead_pct']:.2f} % (95 % interval {o['ci95_low_pct']:.2f} to {o['ci95_high_pct']:.2f} %, "
            f"{o['rounds']} alternating rounds, {o['samples_per_s_with']:,.0f} vs {o['samples_per_s_without']:,.0f} "
            "samples/s).")
    if not o["resolved"]:
        line += (f" The interval is {o['ci95_width_pct']:.2f} points wide, wider than the {o['target_width_pct']:g} "
                 "point target: the overhead is not resolved to that precision.")
    return line


def _several(table: pd.DataFrame, column: str) -> bool:
    """Whether the rows hold more than one value of `column` (seed, world_size)."""
    return column in table and table[column].nunique() > 1


def seeds_rows(ok: pd.DataFrame) -> pd.DataFrame:
    """The rows the seeds section summarises: those of the run's own world size (a --scaling run
    also holds one-GPU rows of the same seeds), when some variant has more than one seed."""
    if "seed" not in ok or ok["seed"].isna().all():
        return pd.DataFrame()
    if "world_size" in ok:
        ok = ok[ok["world_size"] == ok["world_size"].max()]
    return ok if ok.groupby("variant")["seed"].nunique().max() > 1 else pd.DataFrame()


def scaling_table(ok: pd.DataFrame) -> str:
    """Training throughput per world size beside one process's, and the scaling efficiency
    (samples/s on N / (N x samples/s on 1)), per variant and seed measured both ways."""
    if not _several(ok, "world_size"):
        return ""
    key = ["variant", "seed"]
    one = ok[ok["world_size"] == 1][key + ["train_samples_per_s"]].rename(columns={"train_samples_per_s": "one"})
    rows = ok[ok["world_size"] > 1].merge(one, on=key)
    if rows.empty:
        return ""
    table = pd.DataFrame({"variant": rows["variant"], "seed": rows["seed"], "processes": rows["world_size"],
                          "train samples/s": rows["train_samples_per_s"], "one process samples/s": rows["one"],
                          "scaling efficiency": rows["train_samples_per_s"] / (rows["world_size"] * rows["one"])})
    return _fmt(table, {"train samples/s": 0, "one process samples/s": 0, "scaling efficiency": 2}).to_markdown(index=False)


def write_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    results = read_table(run_dir / RESULTS)
    env = read_env(run_dir)
    lines = [f"# fusionbench run {run_dir.name}", ""]
    if env:
        lines += [f"Hardware `{env.get('hardware', '')}`: {env.get('gpu_name') or env.get('cpu_model', '')}; "
                  f"torch {env.get('torch', '')}, CUDA {env.get('cuda') or 'n/a'}, DALI {env.get('dali') or 'not installed'}, "
                  f"Python {env.get('python', '')}.", ""]
        if "nvml_overhead" in env:
            lines += [nvml_overhead_line(env), ""]
    if results.empty:
        lines.append("No variant has finished yet.")
    else:
        ok = results[results["status"] == "ok"]
        failed = results[results["status"] != "ok"]
        if not ok.empty:
            first = ok.iloc[0]
            lines += [f"{len(ok)} variants, {int(first['epochs'])} epochs on {int(first['train_samples'])} training and "
                      f"{int(first['val_samples'])} validation samples.", ""]
            if env.get("profile") == "quick":
                lines += [quick_note(first), ""]
            lines += ["## Seed comparison", "", seed_table(ok), "",
                      "## Speed", "", "Throughput and step latency exclude warm-up and compilation; data wait is "
                      "the share of each step spent waiting for the loader. Harness efficiency is the row's samples/s "
                      "over a plain PyTorch loop's with the same model settings on one fixed batch on the device.",
                      "", speed_table(ok), ""]
            note = efficiency_note(ok)
            if note:
                lines += [note, ""]
            seed_pipeline = seed_pipeline_table(ok)
            if seed_pipeline:
                lines += ["## Speed-up over the seed's way of training", "",
                          "Each row's training samples/s over the seed's pipeline (torch DataLoader, fp32, eager) of "
                          "the same network; rows named -eN ran N epochs, enough for a steady rate.", "",
                          seed_pipeline, ""]
            compiled = compiler_table(ok)
            if compiled:
                lines += ["## Compiler", "", "A recompilation during the timed steps makes a row suspect.", "", compiled, ""]
            notes = notes_table(ok)
            if notes:
                lines += ["## Kernels and notes", "", notes, ""]
            lines += ["## Energy and utilisation", "", energy_table(ok), ""]
            seeds = seeds_rows(ok)
            if not seeds.empty:
                lines += [seeds_section(seeds)]
            scaling = scaling_table(ok)
            if scaling:
                lines += ["## Scaling over processes", "", "Scaling efficiency = training samples/s on N processes "
                          "(all ranks' samples over the slowest rank's time) / (N x one process's samples/s), "
                          "measured in this run by --scaling.", "", scaling, ""]
        robustness = read_table(run_dir / ROBUSTNESS, key=None)
        if not robustness.empty:
            lines += [robustness_section(robustness)]
        inference = read_table(run_dir / INFERENCE, key=None)
        if not inference.empty:
            lines += ["## Inference", "", _fmt(inference, {"samples_per_s": 0, "ms_p50": 3, "ms_p90": 3, "ms_p99": 3})
                      .to_markdown(index=False), ""]
        if not failed.empty:
            lines += ["## Failed variants", "", failed[["variant", "error"]].to_markdown(index=False), ""]
    if (run_dir / CURVES).exists():
        lines += ["Per-epoch curves: `curves.csv`. Plots: `plots/`."]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path

"""report.md from the files a run wrote, so `bench report` can rebuild it at any time."""

from pathlib import Path

import pandas as pd

from reports.intervals import seeds_section
from reports.results import CURVES, INFERENCE, RESULTS, lock_holder, read_env, read_plan, read_table, write_atomically
from reports.robustness_report import ROBUSTNESS, robustness_section

MEMORY_LABELS = {"cuda_max_allocated": "peak mem MB (CUDA max allocated)", "process_peak_rss": "peak mem MB (process peak RSS)",
                 "process_peak_rss_since_start": "peak mem MB (process peak RSS since its start: this kernel does not reset it)"}
# Above this coefficient of variation of the per-epoch steady samples/s a variant's speed is
# called noisy: it is bench compare's default equivalence margin (5 %), so a spread past it
# hides differences compare would call real.
NOISE_CV = 0.05


def _fmt(table: pd.DataFrame, digits: dict) -> pd.DataFrame:
    """Rounded numbers; empty cells read n/a so a missing metric is never mistaken for 0."""
    out = table.astype(object)
    for column, places in digits.items():
        if column in out:
            out[column] = out[column].map(lambda v: "n/a" if pd.isna(v) or v == "" else f"{float(v):,.{places}f}")
    return out.fillna("n/a")


NVML_MEMORY_LABEL = "NVML device used peak MB (whole GPU, steady steps)"


def memory_label(kind: str, excludes: str) -> str:
    """The peak column's header: what it measured, and what it leaves out where it does."""
    label = MEMORY_LABELS.get(kind, kind)
    return f"{label[:-1]}; without {excludes})" if excludes and label.endswith(")") else label


def seed_table(ok: pd.DataFrame) -> str:
    """The seed study's columns, one row per variant; memory labelled with what it measured and
    what it leaves out, with NVML's device memory used beside it where the run sampled NVML."""
    parts = []
    excludes = ok.get("peak_mem_excludes", pd.Series("", index=ok.index)).astype(object).fillna("").astype(str)
    for (kind, left_out), group in ok.groupby([ok["peak_mem_kind"], excludes], sort=False):
        label = memory_label(kind, left_out)
        nvml = ["nvml_mem_peak_mb"] if "nvml_mem_peak_mb" in group and group["nvml_mem_peak_mb"].notna().any() else []
        table = group[["variant", *(["seed"] if _several(ok, "seed") else []), "epochs", "val_loss", "accuracy", "params", "sec_per_epoch", "peak_mem_mb", *nvml]].rename(
            columns={"accuracy": "accuracy %", "sec_per_epoch": "sec/epoch", "peak_mem_mb": label,
                     "nvml_mem_peak_mb": NVML_MEMORY_LABEL})
        table.insert(table.columns.get_loc("accuracy %") + 1, "val scored", scored_samples(group))
        table = _fmt(table, {"val_loss": 6, "accuracy %": 2, "val scored": 0, "params": 0, "sec/epoch": 2, label: 1,
                             NVML_MEMORY_LABEL: 0})
        parts.append(table.to_markdown(index=False))
    return "\n\n".join(parts)


def mfu_per_gpu(ok: pd.DataFrame) -> pd.Series:
    """MFU of one GPU; a run written before the column was named (`mfu`) divided all ranks'
    samples/s by one GPU's peak, so its figure is world_size times the per-GPU one."""
    if "mfu_per_gpu" in ok:
        return pd.to_numeric(ok["mfu_per_gpu"], errors="coerce")
    if "mfu" not in ok:
        return pd.Series(float("nan"), index=ok.index)
    world = ok["world_size"].fillna(1) if "world_size" in ok else 1
    return pd.to_numeric(ok["mfu"], errors="coerce") / world


MFU_NOTE = ("MFU % per GPU: the network's logical training FLOPs per sample (counted at the seed's widths: the "
            "zero padding of aligned widths is not work, see flops_per_sample_stored) x one GPU's samples/s (all "
            "ranks' samples/s over the number of GPUs) / that GPU's dense peak at the variant's precision.")


def scored_samples(ok: pd.DataFrame) -> pd.Series:
    """Validation samples each row scored: whole batches only (the loader drops the last partial
    batch, as the seed's did), per rank's equal shard under torchrun. Batch 8 on 10 scores 8."""
    world = pd.to_numeric(ok.get("world_size", pd.Series(1, index=ok.index)), errors="coerce").fillna(1).astype(int)
    per_rank = pd.to_numeric(ok["val_samples"], errors="coerce") // world
    batch = pd.to_numeric(ok["batch_size"], errors="coerce")
    return world * (per_rank // batch * batch)


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
        "compile s": ok["compile_s"].where(ok["compile_mode"] != "none"),  # eager: nothing compiles
        "infer samples/s": ok["infer_samples_per_s"],
        f"time to {ok['target_acc'].iloc[0]:g}% s": ok["time_to_target_s"],
        "MFU % per GPU": 100 * mfu_per_gpu(ok),
    })
    digits = {c: 1 for c in table.columns if c not in ("variant", "loader")}
    digits.pop("harness efficiency (95 % interval)")
    digits.update({"train samples/s": 0, "plain loop samples/s": 0, "infer samples/s": 0,
                   "step ms p50": 2, "p90": 2, "p99": 2, "MFU % per GPU": 2})
    text = _fmt(table, digits).to_markdown(index=False)
    return text + "\n\n" + MFU_NOTE if table["MFU % per GPU"].notna().any() else text


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


ENERGY_WINDOWS = ("Windows: GPU util, power, energy J, above idle, samples/J and J/step cover the energy window, "
                  "the variant's last epochs trained back to back (evaluated after it, each from its own weights), "
                  "with steps after the last epoch where they fall short, in one window of at least 50 counter "
                  "periods (window s; accuracy, curves and throughput stay the epochs'), or where none ran (window "
                  "s n/a) the timed steady steps of the epochs (warm-up and validation excluded); compile J is the "
                  "warm-up steps, where a compiled model compiles (its eval graph compiles in the first "
                  "validation); validation J is every evaluation; phase J is the whole training phase (all of them); J to target counts from the "
                  "start of training, like the time to target. With several processes (GPUs > 1), energy, power and "
                  "J/step are the node's, summed over every GPU of the node the run used, and samples/J is the "
                  "node's samples over the node's energy.")


ENERGY_RESOLUTION = ("Each energy figure is given ± its uncertainty from the energy counter's update period P{period}: "
                     "a reading is up to one period stale, so each window boundary can shift up to one period of the "
                     "mean power into or out of the window; ± is 2 x P x mean power per window, summed over the "
                     "figure's windows (bench.instruments.nvml.energy_uncertainty_j).")
UNRESOLVED = ("Figures in parentheses are not resolved: their uncertainty is above 4 % (their windows average "
              "under 50 counter periods), so they are not comparable as fact: {variants}.")
# Each figure and its uncertainty column; samples/J and J per step take energy J's relative uncertainty.
ENERGY_PM = {"energy J": "energy_j_pm", "compile J": "compile_energy_j_pm", "validation J": "val_energy_j_pm",
             "phase J": "phase_energy_j_pm", "J to target": "j_to_target_pm"}


def _with_pm(value, pm, places: int) -> str:
    if pd.isna(value) or value == "":
        return "n/a"
    text = f"{float(value):,.{places}f}"
    return f"{text} ± {float(pm):,.{places}f}" if pd.notna(pm) and pm != "" else text


def _energy_cells(ok: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """The energy columns as `value ± uncertainty`, and J per step; unresolved headline figures in
    parentheses. Rows from runs before uncertainties were recorded show the value alone."""
    ok = ok.reset_index(drop=True)
    table = table.reset_index(drop=True)
    for name, pm in ENERGY_PM.items():
        if name in table and pm in ok:
            table[name] = [_with_pm(v, u, 0) for v, u in zip(ok[ENERGY_COLUMNS_BY_NAME[name]], ok[pm])]
    relative = ok["energy_j_pm"] / ok["energy_j"] if "energy_j_pm" in ok else pd.Series(float("nan"), index=ok.index)
    gpus = ok["nvml_gpus"].fillna(1) if "nvml_gpus" in ok else 1
    per_step = ok["batch_size"] * gpus / ok["samples_per_j"]  # the node's samples of one step over samples/J
    table["samples/J"] = [_with_pm(v, v * r, 1) for v, r in zip(ok["samples_per_j"], relative)]
    table.insert(list(table.columns).index("samples/J") + 1, "J/step",
                 [_with_pm(v, v * r, 3) for v, r in zip(per_step, relative)])
    if "energy_resolved" in ok:
        unresolved = ok["energy_resolved"].astype(str).eq("False")
        for name in ("energy J", "samples/J", "J/step"):
            table.loc[unresolved, name] = "(" + table.loc[unresolved, name] + ")"
    return table


ENERGY_COLUMNS = {"variant": "variant", "nvml_gpus": "GPUs", "gpu_util_mean": "GPU util %", "power_w_mean": "power W",
                  "power_w_max": "max W", "energy_j": "energy J", "energy_above_idle_j": "above idle J",
                  "samples_per_j": "samples/J", "energy_window_s": "window s", "compile_energy_j": "compile J",
                  "val_energy_j": "validation J", "phase_energy_j": "phase J", "j_to_target": "J to target", "energy_source": "source",
                  "throttled_share": "throttled", "nvml_mem_peak_mb": "NVML mem MB"}
ENERGY_COLUMNS_BY_NAME = {name: column for column, name in ENERGY_COLUMNS.items()}


def energy_table(ok: pd.DataFrame, env: dict | None = None) -> str:
    """Energy and utilisation per variant, each energy figure with its uncertainty and a note on
    what the windows cover; several GPUs are named (the figures are then the node's)."""
    if "energy_j" not in ok or ok["energy_j"].isna().all():
        notes = sorted({str(n) for n in ok.get("nvml_note", pd.Series(dtype=str)).dropna() if str(n)})
        return "NVML metrics: n/a (" + ("; ".join(notes) or "not sampled") + ")."
    columns = {c: n for c, n in ENERGY_COLUMNS.items() if c in ok and (c != "nvml_gpus" or (ok[c].fillna(1) > 1).any())}
    table = ok[list(columns)].rename(columns=columns)
    digits = {name: 0 for name in table.columns if name not in ("variant", "source", "samples/J", "throttled")}
    table = _energy_cells(ok, _fmt(table, {**digits, "samples/J": 1, "window s": 1, "throttled": 2}))
    windows = ENERGY_WINDOWS if "phase_energy_j" in ok else "Windows: every figure covers the whole training phase."
    lines = [windows]
    if "energy_j_pm" in ok:
        period = (env or {}).get("nvml_counter_period_s")
        lines.append(ENERGY_RESOLUTION.format(period=f" ({1000 * period:.0f} ms, measured before the run)"
                                              if isinstance(period, (int, float)) and period == period else ""))
        unresolved = ok["energy_resolved"].astype(str).eq("False") if "energy_resolved" in ok else ok["energy_j"].isna()
        if unresolved.any():
            lines.append(UNRESOLVED.format(variants=", ".join(ok.loc[unresolved, "variant"])))
    return " ".join(lines) + "\n\n" + table.to_markdown(index=False)


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


def _run_label(run: dict, several_seeds: bool, several_worlds: bool) -> str:
    return (str(run["variant"]) + (f" seed {run.get('seed')}" if several_seeds else "")
            + (f" on {run.get('world_size')} processes" if several_worlds else ""))


def status_lines(run_dir: Path, results: pd.DataFrame) -> list[str]:
    """What of the planned runs (plan.json) has no row: still to come while another process
    holds the run's lock, else the run was interrupted (or stopped on an error) before them."""
    plan = read_plan(run_dir)
    done = set()
    if not results.empty:
        unknown = pd.Series(float("nan"), index=results.index)  # a row without the column matches no plan entry
        seeds = pd.to_numeric(results.get("seed", unknown), errors="coerce")
        worlds = pd.to_numeric(results.get("world_size", unknown), errors="coerce")
        done = set(zip(results["variant"].astype(str), seeds, worlds))
    missing = [r for r in plan if (str(r["variant"]), r.get("seed"), r.get("world_size")) not in done]
    if not missing:
        return []
    names = ", ".join(_run_label(r, len({p.get("seed") for p in plan}) > 1, len({p.get("world_size") for p in plan}) > 1)
                      for r in missing)
    holder = lock_holder(run_dir)
    if holder:
        return [f"**In progress**: {holder} is still running; {len(missing)} of the {len(plan)} planned runs have "
                f"no row yet: {names}.", ""]
    return [f"**Interrupted**: {len(missing)} of the {len(plan)} planned runs have no row (the run stopped before "
            f"them, or a damaged row was dropped): {names}. `python -m bench all --resume {run_dir}` with the run's "
            "options runs them.", ""]


def sessions_section(results: pd.DataFrame) -> str:
    """Which process made which rows, with its code version and times: more than one process
    means the run was resumed, and the reader sees which rows came later and from what code."""
    if "session" not in results or results["session"].isna().all():
        return ""
    rows = results.assign(session=results["session"].fillna("(not recorded)"))
    table = pd.DataFrame([{"session": session, "code version": group["code_version"].iloc[0],
                           "first started (UTC)": group["started_at"].min(), "last finished (UTC)": group["finished_at"].max(),
                           "rows": len(group), "variants": ", ".join(group["variant"].astype(str))}
                          for session, group in rows.groupby("session", sort=False)])
    table = table.sort_values("first started (UTC)", kind="stable")
    if len(table) == 1:
        first = table.iloc[0]
        return (f"Every row comes from one process (session `{first['session']}`, code {first['code version']}, "
                f"{first['first started (UTC)']} to {first['last finished (UTC)']} UTC).\n")
    return (f"## Sessions\n\nThe rows come from {len(table)} processes: the run was resumed. Rows of a later "
            "session were measured at another time (the machine's load and clocks may differ).\n\n"
            + table.to_markdown(index=False) + "\n")


def noise_section(ok: pd.DataFrame, curves: pd.DataFrame) -> str:
    """The spread of each variant's steady samples/s between its timed epochs (all repeats), and
    a warning where it passes NOISE_CV: differences smaller than that are this machine's noise."""
    rows = []
    if not curves.empty and "train_samples_per_s" in curves:
        curves = curves[curves["variant"].isin(ok["variant"])]
        keys = ["variant", "seed"] if "seed" in curves else ["variant"]
        for _, group in curves.groupby(keys, sort=False, dropna=False):
            rate = pd.to_numeric(group["train_samples_per_s"], errors="coerce").dropna()
            rate = rate[rate > 0]
            if len(rate) > 1:
                rows.append({"variant": group["variant"].iloc[0], "seed": group.get("seed", pd.Series([""])).iloc[0],
                             "timed epochs": len(rate), "samples/s mean": rate.mean(),
                             "CV %": 100 * rate.std(ddof=1) / rate.mean(), "max/min": rate.max() / rate.min()})
    if not rows:
        return ("Noise: every variant has one timed epoch, so the spread of its speed on this machine is not "
                "measured; `--epochs 3` or `--repeats 3` measures it.\n")
    table = pd.DataFrame(rows)
    if not _several(table, "seed"):
        table = table.drop(columns="seed")
    noisy = table[table["CV %"] > 100 * NOISE_CV]
    text = (f"Spread of the steady training samples/s between timed epochs (and repeats): coefficient of variation "
            f"(std / mean) and max/min. Above {100 * NOISE_CV:g} % (the margin within which `bench compare` calls "
            "two runs the same) differences of that size between variants are this machine's noise.\n\n")
    if not noisy.empty:
        text += (f"**Noisy**: {len(noisy)} of {len(table)} variants spread more than {100 * NOISE_CV:g} % "
                 f"(up to {noisy['CV %'].max():.1f} %, max/min {noisy['max/min'].max():.2f}): "
                 f"{', '.join(dict.fromkeys(noisy['variant']))}. Rerun on an idle machine before trusting "
                 "their speed differences.\n\n")
    return text + _fmt(table, {"samples/s mean": 0, "CV %": 1, "max/min": 2}).to_markdown(index=False) + "\n"


def write_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    results = read_table(run_dir / RESULTS)
    env = read_env(run_dir)
    lines = [f"# fusionbench run {run_dir.name}", "", *status_lines(run_dir, results)]
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
            partial = (scored_samples(ok) < pd.to_numeric(ok["val_samples"], errors="coerce")).any()
            lines += [f"{len(ok)} variants, {int(first['epochs'])} epochs on {int(first['train_samples'])} training and "
                      f"{int(first['val_samples'])} validation samples"
                      + (": validation scores whole batches (the last partial one is dropped, as in the seed), so each "
                         "row's accuracy is over its `val scored` samples and moves in steps of 100 / that %."
                         if partial else "."), ""]
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
            lines += [noise_section(ok, read_table(run_dir / CURVES, key=None))]
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
            lines += ["## Energy and utilisation", "", energy_table(ok, env), ""]
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
        sessions = sessions_section(results)
        if sessions:
            lines += [sessions]
    if (run_dir / CURVES).exists():
        lines += ["Per-epoch curves: `curves.csv`. Plots: `plots/`."]
    return write_atomically(run_dir / "report.md", "\n".join(lines) + "\n")

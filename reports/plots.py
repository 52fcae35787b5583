"""PNG plots of a run (throughput with its spread, accuracy against throughput, the NVML
timeline, validation curves) and of a comparison (one bar group per variant, a bar per run)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from reports.results import CURVES, RESULTS, read_table, write_png  # noqa: E402
from reports.robustness_report import ROBUSTNESS, write_robustness_plot  # noqa: E402

NVML = "nvml.csv"


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    try:
        return write_png(fig, path)
    finally:
        plt.close(fig)


def _log_if_wide(ax, values) -> None:
    """Log scale where the values span two decades or more, else small bars vanish."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    if len(values) and values.max() / values.min() >= 100:
        ax.set_xscale("log")


def grouped_bars(table: pd.DataFrame, xlabel: str, path: Path, errors: pd.DataFrame | None = None) -> Path:
    """Horizontal grouped bars: a group per row (variant), a bar per column, optional error bars."""
    groups, series = len(table), len(table.columns)
    height = 0.8 / series
    fig, ax = plt.subplots(figsize=(10, 0.25 * groups * series + 1.8))
    y = np.arange(groups)
    for i, column in enumerate(table.columns):
        err = None if errors is None or column not in errors else errors[column].to_numpy(float)
        ax.barh(y + i * height, table[column].to_numpy(float), height, xerr=err, capsize=2, label=str(column))
    ax.set_yticks(y + height * (series - 1) / 2, table.index, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    _log_if_wide(ax, table.to_numpy())
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_throughput(ok: pd.DataFrame, path: Path) -> Path:
    """Training (± std over epochs or repeats) and inference samples/s per variant."""
    table = ok.set_index("variant")[["train_samples_per_s", "infer_samples_per_s"]]
    table = table.apply(pd.to_numeric, errors="coerce")
    table.columns = ["training", "inference"]
    errors = pd.DataFrame({"training": pd.to_numeric(ok["train_samples_per_s_std"], errors="coerce").to_numpy()},
                          index=table.index)
    return grouped_bars(table, "samples/s (steady state; error bar: std)", path, errors)


def plot_accuracy_vs_throughput(ok: pd.DataFrame, path: Path) -> Path:
    """One point per variant; a legend rather than labels, since equal-accuracy points coincide."""
    fig, ax = plt.subplots(figsize=(9, 4.5 + 0.2 * len(ok)))
    markers = "osD^v<>Pp*hX"
    for i, (_, row) in enumerate(ok.iterrows()):
        ax.scatter(row["train_samples_per_s"], row["accuracy"], marker=markers[i % len(markers)], s=50,
                   alpha=0.8, label=row["variant"])
    ax.set_xlabel("training samples/s")
    ax.set_ylabel("validation accuracy %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    return _save(fig, path)


def variant_starts(nvml: pd.DataFrame) -> list[tuple[float, str]]:
    """(seconds from the first sample, variant) where each variant's samples begin, from the
    sampler's markers ("<variant>:train:<repeat>", "<variant>:inference", "idle")."""
    t = nvml["time"] - nvml["time"].iloc[0]
    variants = nvml["marker"].fillna("").astype(str).str.split(":").str[0]
    starts = variants.ne(variants.shift()) & ~variants.isin(["", "idle"])
    return list(zip(t[starts].tolist(), variants[starts].tolist()))


def plot_nvml(nvml: pd.DataFrame, path: Path) -> Path:
    """Power, SM clock and utilisation over time, a line per GPU when several were sampled (the
    `gpu` column under torchrun), with a line where each variant starts."""
    start = nvml["time"].iloc[0]
    gpus = list(nvml.groupby("gpu")) if "gpu" in nvml and nvml["gpu"].nunique() > 1 else [(None, nvml)]
    fig, (power, util) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    clock = power.twinx()
    for gpu, samples in gpus:
        t, tag = samples["time"] - start, "" if gpu is None else f"GPU {int(gpu)} "
        power.plot(t, samples["power_w"], lw=0.8, label=f"{tag}power W")
        clock.plot(t, samples["sm_clock_mhz"], lw=0.8, ls=":", label=f"{tag}SM clock MHz")
        util.plot(t, samples["gpu_util"], lw=0.8, label=f"{tag}GPU util %")
        util.plot(t, samples["mem_util"], lw=0.8, label=f"{tag}memory util %")
    power.set_ylabel("power W")
    clock.set_ylabel("SM clock MHz (dotted)")
    util.set_ylabel("utilisation %")
    util.set_xlabel("seconds")
    util.legend(fontsize=8, loc="upper right")
    for time, name in variant_starts(nvml):
        for ax in (power, util):
            ax.axvline(time, color="grey", lw=0.6, ls="--")
        power.annotate(name, (time, 1.0), xycoords=("data", "axes fraction"), rotation=90, fontsize=6,
                       va="top", ha="right", bbox={"fc": "white", "ec": "none", "alpha": 0.8, "pad": 1})
    return _save(fig, path)


def plot_curves(curves: pd.DataFrame, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    last = curves["repeat"] == curves["repeat"].max()
    if "seed" in curves:  # several seeds: the first seed's curves
        last &= curves["seed"] == curves["seed"].iloc[0]
    for variant, group in curves[last].groupby("variant", sort=False):
        ax.plot(group["epoch"], group["accuracy"], marker="o", label=variant)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("validation accuracy %")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_leaderboard(board: pd.DataFrame, label: str, path: Path) -> Path:
    """compare's plot: a bar group per variant, a bar per run (hardware)."""
    return grouped_bars(board, label, path)


def write_plots(run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    out = run_dir / "plots"
    written = []
    results = read_table(run_dir / RESULTS)
    ok = results[results["status"] == "ok"] if not results.empty else results
    if not ok.empty:
        written.append(plot_throughput(ok, out / "throughput.png"))
        written.append(plot_accuracy_vs_throughput(ok, out / "accuracy_vs_throughput.png"))
    nvml = read_table(run_dir / NVML, key=None)
    if not nvml.empty and nvml["power_w"].notna().any():
        written.append(plot_nvml(nvml, out / "nvml.png"))
    curves = read_table(run_dir / CURVES, key=None)
    if not curves.empty:
        written.append(plot_curves(curves, out / "accuracy.png"))
    robustness = read_table(run_dir / ROBUSTNESS, key=None)
    if not robustness.empty:
        written.append(write_robustness_plot(robustness, out))
    return written

"""PNG plots of a run: throughput per variant and validation accuracy per epoch."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from reports.results import CURVES, RESULTS, read_table  # noqa: E402


def write_plots(run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    written = []
    results = read_table(run_dir / RESULTS)
    if not results.empty:
        ok = results[results["status"] == "ok"]
        if not ok.empty:
            fig, ax = plt.subplots(figsize=(8, 0.4 * len(ok) + 1.5))
            ax.barh(ok["variant"], ok["train_samples_per_s"])
            ax.set_xlabel("training samples/s (steady state)")
            ax.invert_yaxis()
            fig.tight_layout()
            written.append(out / "throughput.png")
            fig.savefig(written[-1], dpi=100)
            plt.close(fig)
    curves = read_table(run_dir / CURVES, key=None)
    if not curves.empty:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for variant, group in curves[curves["repeat"] == curves["repeat"].max()].groupby("variant", sort=False):
            ax.plot(group["epoch"], group["accuracy"], marker="o", label=variant)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("validation accuracy %")
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(out / "accuracy.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    return written

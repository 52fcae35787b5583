"""Report and compare plots from fixture runs: every plot is written, scales and boundaries are right."""

import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from reports.plots import _log_if_wide, plot_leaderboard, plot_nvml, variant_starts, write_plots

RUNS = Path(__file__).parent / "fixtures" / "results"


def test_run_plots_from_an_h200_run(tmp_path):
    run = shutil.copytree(RUNS / "h200-seed", tmp_path / "seed")
    written = write_plots(run)
    assert [p.name for p in written] == ["throughput.png", "accuracy_vs_throughput.png", "nvml.png", "accuracy.png"]
    assert all(p.stat().st_size > 10_000 for p in written)


def test_a_run_without_nvml_has_no_timeline(tmp_path):
    run = shutil.copytree(RUNS / "cpu-quick", tmp_path / "cpu")
    assert "nvml.png" not in [p.name for p in write_plots(run)]


def test_nvml_timeline_draws_a_line_per_gpu_under_torchrun(tmp_path, monkeypatch):
    import reports.plots
    figures = []
    monkeypatch.setattr(reports.plots, "_save", lambda fig, path: figures.append(fig) or path)
    one = pd.read_csv(RUNS / "h200-seed" / "nvml.csv").head(400)
    two = pd.concat([one.assign(gpu=0), one.assign(gpu=1, power_w=one["power_w"] / 2)]).sort_values("time", kind="stable")
    plot_nvml(two, tmp_path / "nvml.png")
    power = figures[0].axes[0]
    labels = [line.get_label() for line in power.lines if not line.get_label().startswith("_")]  # not the variant lines
    assert labels == ["GPU 0 power W", "GPU 1 power W"]
    plt.close(figures[0])


def test_nvml_boundaries_are_where_each_variant_starts():
    nvml = pd.read_csv(RUNS / "h200-seed" / "nvml.csv")
    starts = variant_starts(nvml)
    results = pd.read_csv(RUNS / "h200-seed" / "results.csv")
    assert [name for _, name in starts] == list(results["variant"])  # inference markers do not add lines
    times = [time for time, _ in starts]
    assert times == sorted(times) and times[0] > 0


@pytest.mark.parametrize("values,scale", [([40, 9000, 47000], "log"), ([7000, 9000, 14000], "linear")])
def test_log_scale_only_where_values_span_decades(values, scale):
    fig, ax = plt.subplots()
    _log_if_wide(ax, values)
    assert ax.get_xscale() == scale
    plt.close(fig)


def test_leaderboard_plot_has_a_bar_per_run_and_variant(tmp_path):
    board = pd.DataFrame({"nvidia-h200": [9000.0, 8600.0], "cpu-amd-epyc-2c": [45.0, float("nan")]},
                         index=["add-b32", "concat-b32"])
    path = plot_leaderboard(board, "train samples/s", tmp_path / "plots" / "compare.png")
    assert path.stat().st_size > 10_000

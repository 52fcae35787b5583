"""End to end: `python -m bench` as a user runs it, on a tiny dataset."""

import json
from types import SimpleNamespace

import pandas as pd
import pytest

from bench.commands.all import check_batch_sizes
from bench.errors import UsageError
from bench.variants import Variant
from conftest import bench, host_peak_resets
from reports.results import CURVE_COLUMNS, RESULT_COLUMNS, SCHEMA_VERSION


def test_all_writes_the_run_directory(tiny_data, tmp_path):
    out = tmp_path / "run"
    done = bench("all", "--data", tiny_data, "--arch", "late,add", "--epochs", "1", "--batch-size", "8",
                 "--out", out, "--no-progress", "--workers", "0")
    assert done.returncode == 0, done.stderr
    for name in ("results.csv", "curves.csv", "inference.csv", "report.md", "env.json", "plots/throughput.png",
                 "plots/accuracy.png"):
        assert (out / name).exists(), name
    results = pd.read_csv(out / "results.csv")
    assert list(results.columns) == RESULT_COLUMNS
    assert list(results["arch"]) == ["late", "add"] and set(results["status"]) == {"ok"}
    assert set(results["loader"]) == {"resident"} and results["hardware"].notna().all()  # the quick profile's default loader
    assert list(pd.read_csv(out / "curves.csv").columns) == CURVE_COLUMNS
    report = (out / "report.md").read_text()
    assert "| variant" in report and "val_loss" in report
    assert "peak mem MB (process peak RSS)" in report or (  # only where the kernel ignores the peak's reset
        "peak mem MB (process peak RSS since its start" in report and not host_peak_resets())
    env = json.loads((out / "env.json").read_text())
    assert env["torch"] and env["hardware"] and env["profile"] == "quick"
    assert env["schema_version"] == SCHEMA_VERSION  # bench compare reads it
    assert (tiny_data / "split.json").exists()  # made on first use

    rebuilt = bench("report", out)
    assert rebuilt.returncode == 0 and (out / "report.md").read_text() == report


def test_bad_data_gets_a_clear_error_and_leaves_no_run_directory(tmp_path):
    done = bench("all", "--data", tmp_path / "missing", "--epochs", "1", cwd=tmp_path)
    assert done.returncode == 2
    assert f"dataset folder {tmp_path / 'missing'} does not exist" in done.stderr
    assert not (tmp_path / "runs").exists()


def test_data_and_split_commands(tmp_path):
    done = bench("data", "--out", tmp_path / "d", "--per-class", "6", "--seed", "1")
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "d" / "spheres" / "rgb").glob("*.png"))) == 6
    again = bench("data", "--out", tmp_path / "d", "--per-class", "6")
    assert again.returncode == 2 and "d/cubes" in again.stderr
    done = bench("split", "--data", tmp_path / "d", "--seed", "3")
    assert done.returncode == 0 and "10 train, 2 val" in done.stdout
    split = json.loads((tmp_path / "d" / "split.json").read_text())
    assert split["seed"] == 3


def test_batch_sizes_are_checked_against_each_ranks_share_of_the_split():
    """Under torchrun each rank trains on len(split) // world_size samples."""
    cfg = SimpleNamespace(train_ids=["x"] * 10, val_ids=["y"] * 12, world_size=2, infer_batch_sizes=())
    check_batch_sizes([Variant("add", batch_size=5)], cfg)
    with pytest.raises(UsageError, match=r"--batch-size 6: larger than the train split's 5 samples per rank of 2"):
        check_batch_sizes([Variant("add", batch_size=5), Variant("add", batch_size=6)], cfg)
    with pytest.raises(UsageError, match=r"--infer-batch-sizes 8: larger than the val split's 6 samples per rank"):
        check_batch_sizes([Variant("add", batch_size=1)], SimpleNamespace(**{**vars(cfg), "infer_batch_sizes": (2, 8)}))

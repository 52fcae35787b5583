"""End to end: `python -m bench` as a user runs it, on a tiny dataset."""

import json

import pandas as pd
import pytest

from conftest import bench
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
    assert "| variant" in report and "val_loss" in report and "peak mem MB (process peak RSS)" in report
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


@pytest.mark.parametrize("args,message", [
    (["all", "--batch-size", "0"], "must be at least 1"),
    (["all", "--loader", "webdataset"], "webdataset not one of torch, resident, dali"),
    (["report", "nowhere"], "has no results.csv"),
    (["all", "--resume", "nowhere"], "--resume nowhere: no results.csv there"),
    (["all", "--kernels", "nowhere.csv"], "--kernels nowhere.csv: no such file or folder"),
])
def test_bad_options(args, message, tmp_path):
    done = bench(*args, cwd=tmp_path)
    assert done.returncode != 0 and message in done.stderr


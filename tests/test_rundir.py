"""Run-directory identity: no silent reuse, resume only with the same settings, one process per
folder, SIGTERM ends like Ctrl-C; and `bench all` stops with exit 2 on broken data."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bench.parent.rundir import LOCK, code_version, lock, open_run_dir, sigterm_as_interrupt, split_fingerprint
from reports.results import RESULTS, RunDirError, read_env, read_table

SETTINGS = {"epochs": 3, "profile": "quick", "seed": 42, "data": "abc", "split": "def", "code": "v1"}
ROOT = Path(__file__).resolve().parents[1]


def test_new_run_records_settings_and_is_resumable_at_once(tmp_path):
    run = tmp_path / "run"
    held = open_run_dir(run, SETTINGS, {"torch": "x"})
    held.close()
    assert read_env(run)["settings"] == SETTINGS and read_env(run)["torch"] == "x"
    assert read_table(run / RESULTS).empty  # header only: a run stopped before its first variant
    open_run_dir(run, SETTINGS, {"torch": "other"}, resume=True).close()
    assert read_env(run)["torch"] == "x"  # a resume never rewrites env.json


def test_out_on_an_existing_run_is_refused_unless_forced(tmp_path):
    run = tmp_path / "run"
    open_run_dir(run, SETTINGS, {}).close()
    with pytest.raises(RunDirError, match="already holds a run; continue it with --resume"):
        open_run_dir(run, SETTINGS, {})
    open_run_dir(run, {**SETTINGS, "epochs": 5}, {}, force=True).close()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and read_env(aside[0])["settings"] == SETTINGS
    assert read_env(run)["settings"]["epochs"] == 5


def test_a_folder_without_a_run_is_used(tmp_path):
    """E.g. split.json saved there because the data folder is read-only (bench.parent.datasource)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "split.json").write_text("{}")
    open_run_dir(run, SETTINGS, {}).close()
    assert read_env(run)["settings"] == SETTINGS


def test_resume_with_other_settings_lists_every_difference(tmp_path):
    run = tmp_path / "run"
    open_run_dir(run, SETTINGS, {}).close()
    changed = {**SETTINGS, "epochs": 5, "data": "xyz"}
    with pytest.raises(RunDirError) as error:
        open_run_dir(run, changed, {}, resume=True)
    message = str(error.value)
    assert "epochs: run 3, now 5" in message and "data: run 'abc', now 'xyz'" in message and "seed" not in message
    assert read_env(run)["settings"] == SETTINGS
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="no env.json with the run's settings"):
        open_run_dir(tmp_path / "empty", SETTINGS, {}, resume=True)


def test_a_folder_in_use_is_locked(tmp_path):
    run = tmp_path / "run"
    held = open_run_dir(run, SETTINGS, {})
    with pytest.raises(RunDirError, match=f"in use by pid {os.getpid()}"):
        open_run_dir(run, SETTINGS, {}, resume=True)
    held.close()  # what the end of the process does
    lock(run).close()
    assert (run / LOCK).exists()


def test_fingerprints_and_code_version():
    split = {"seed": 1, "train": ["cube_0001"], "val": ["sphere_0001"]}
    assert split_fingerprint(split) == split_fingerprint(dict(reversed(split.items())))
    assert split_fingerprint(split) != split_fingerprint({**split, "train": ["cube_0002"]})
    assert code_version() not in ("", "unknown")


def test_sigterm_raises_keyboard_interrupt():
    previous = signal.getsignal(signal.SIGTERM)
    try:
        sigterm_as_interrupt()
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    finally:
        signal.signal(signal.SIGTERM, previous)


def bench_all(data, *extra):
    return [sys.executable, "-m", "bench", "all", "--data", str(data), "--arch", "add", "--epochs", "1",
            "--batch-size", "8", "--device", "cpu", "--no-progress", *extra]


def test_broken_data_stops_before_training_with_exit_2(tiny_data, tmp_path):
    data = shutil.copytree(tiny_data, tmp_path / "data")
    (data / "split.json").unlink(missing_ok=True)
    depth = np.load(data / "cubes" / "lidar" / "0003.npy")
    depth[0, 0] = np.nan
    np.save(data / "cubes" / "lidar" / "0003.npy", depth)
    (data / "spheres" / "rgb" / "0001.png").write_bytes(b"oops")
    done = subprocess.run(bench_all(data, "--out", str(tmp_path / "run")), cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "cubes/lidar/0003.npy contains 1 non-finite" in done.stderr and "spheres/rgb/0001.png" in done.stderr
    assert not (tmp_path / "run").exists()
    assert not (data / "split.json").exists()  # a split of broken data would fail the next run once it is fixed


def wait_for(process, condition, what, timeout=240):
    start = time.time()
    while not condition():
        assert process.poll() is None, f"ended before {what}: {process.communicate()}"
        assert time.time() - start < timeout, f"no {what} after {timeout} s"
        time.sleep(0.2)


def test_sigterm_writes_report_and_the_folder_resumes(tiny_data, tmp_path):
    """SIGTERM as soon as the run directory exists: exit 130, report written, resume printed;
    then --resume with the same settings is accepted (and stopped the same way)."""
    run = tmp_path / "run"
    first = subprocess.Popen(bench_all(tiny_data, "--out", str(run)), cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    wait_for(first, lambda: (run / "env.json").exists(), "env.json")
    first.send_signal(signal.SIGTERM)
    output = first.communicate(timeout=120)[0]
    assert first.returncode == 130, output
    assert f"continue with --resume {run}" in output and (run / "report.md").exists()
    assert json.loads((run / "env.json").read_text())["settings"]["epochs"] == 1
    second = subprocess.Popen(bench_all(tiny_data, "--resume", str(run)), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    wait_for(second, lambda: second.poll() is not None or (run / LOCK).read_text().startswith(f"pid {second.pid}"),
             "the resumed run's lock")
    second.send_signal(signal.SIGTERM)
    output = second.communicate(timeout=120)[0]
    assert second.returncode in (0, 130) and "error" not in output, output


def test_resume_drops_curves_of_variants_without_a_result_row(tmp_path):
    from reports.results import CURVE_COLUMNS, CURVES, RESULT_COLUMNS, append_rows
    run = tmp_path / "run"
    open_run_dir(run, SETTINGS, {}).close()
    append_rows(run / CURVES, [{"variant": "a", "epoch": 0}, {"variant": "b", "epoch": 0}], CURVE_COLUMNS)
    append_rows(run / RESULTS, [{"variant": "a", "status": "ok"}], RESULT_COLUMNS)
    open_run_dir(run, SETTINGS, {}, resume=True).close()
    assert read_table(run / CURVES, key=None)["variant"].tolist() == ["a"]


def test_force_never_moves_a_run_another_process_holds(tmp_path):
    """The lock is per open file, so the process holding it here stands for another `bench all`."""
    run = tmp_path / "run"
    held = open_run_dir(run, SETTINGS, {"torch": "x"})
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(RunDirError, match=f"{run} is in use by pid {os.getpid()}"):
        open_run_dir(run, {**SETTINGS, "epochs": 5}, {}, force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # nothing moved aside
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing written
    held.close()


def test_plan_is_recorded_and_a_resume_adds_its_runs(tmp_path):
    from reports.results import read_plan
    run = tmp_path / "run"
    first = [{"variant": "a", "seed": 42, "world_size": 1}]
    open_run_dir(run, SETTINGS, {}, plan=first).close()
    assert read_plan(run) == first
    more = [{"variant": "a", "seed": 42, "world_size": 1}, {"variant": "b", "seed": 42, "world_size": 1}]
    open_run_dir(run, SETTINGS, {}, resume=True, plan=more).close()
    assert read_plan(run) == more


def test_rows_name_their_process_code_and_times(tmp_path, monkeypatch):
    """Every results row, ok or failed, carries started_at <= finished_at, the session and code version."""
    import torch
    from bench.config import RunConfig
    from bench.parent import matrix
    from bench.parent.rundir import session
    from bench.variants import Variant
    from bench.worker.runner import VariantResult
    run = tmp_path / "run"
    open_run_dir(run, SETTINGS, {}).close()

    def measure(variant, cfg, ctx=None):
        if variant.arch == "mul":
            raise RuntimeError("boom")
        return VariantResult({**variant.settings(), "status": "ok", "seed": cfg.seed, "world_size": 1, "accuracy": 50.0,
                              "val_loss": 0.7, "train_samples_per_s": 9.0, "sec_per_epoch": 1.0}, [], [])
    monkeypatch.setattr(matrix, "measure", measure)
    monkeypatch.setattr(matrix, "write_plots", lambda run_dir: [])
    monkeypatch.setattr(matrix, "write_report", lambda run_dir: None)
    cfg = RunConfig(data_root=str(tmp_path), train_ids=[], val_ids=[], device=torch.device("cpu"), progress=False)
    assert matrix.run_matrix([Variant("add"), Variant("mul")], cfg, run, {}) == 1
    rows = read_table(run / RESULTS)
    assert rows["status"].tolist() == ["ok", "failed"]
    assert (rows["started_at"] <= rows["finished_at"]).all() and rows["started_at"].str.endswith("+00:00").all()
    assert set(rows["session"]) == {session()["session"]} and str(os.getpid()) in session()["session"]
    assert set(rows["code_version"]) == {code_version()}

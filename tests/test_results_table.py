"""Crash-safe tables: results.csv cut at every byte offset of its last row, or damaged in any
row, is read without that row (with a warning naming its line), reported, and resumed by
re-running exactly that variant; a damaged file is a one-line error; a failed write (a full
disk) leaves the last good file."""

import contextlib
import errno
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from bench.parent import matrix as run_module
from bench.config import RunConfig
from bench.parent.matrix import run_matrix
from bench.worker.runner import VariantResult
from bench.variants import Variant
from reports.markdown import write_report
from reports.results import (ENV, RESULT_COLUMNS, RESULTS, RunDirError, TableWarning, append_rows, done_variants, read_env,
                             read_table)

VARIANTS = [Variant("add", batch_size=8), Variant("mul", batch_size=8)]


def ok_row(variant: Variant) -> dict:
    return {**variant.settings(), "seed": 42, "world_size": 1, "status": "ok", "error": "", "epochs": 1, "train_samples": 16, "val_samples": 16,
            "loader_form": "png", "params": 1, "val_loss": 0.5, "accuracy": 75.0, "sec_per_epoch": 1.0,
            "train_samples_per_s": 10.0, "target_acc": 99.0, "peak_mem_kind": "process_peak_rss", "peak_mem_mb": 1.0}


@pytest.fixture
def full_run(tmp_path):
    run = tmp_path / "full"
    run.mkdir()
    for variant in VARIANTS:
        append_rows(run / RESULTS, [ok_row(variant)], RESULT_COLUMNS)
    return run


def torn_copies(full_run, tmp_path):
    """(offset, run dir) with results.csv cut at each byte offset inside its last row."""
    data = (full_run / RESULTS).read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    for offset in range(start, len(data)):
        run = tmp_path / f"cut{offset}"
        shutil.copytree(full_run, run)
        (run / RESULTS).write_bytes(data[:offset])
        yield offset, run


def test_rows_are_whole_lines_even_with_newlines_in_errors(tmp_path):
    path = tmp_path / RESULTS
    append_rows(path, [{**ok_row(VARIANTS[0]), "status": "failed", "error": "line one\nline two"}], RESULT_COLUMNS)
    assert path.read_bytes().count(b"\n") == 2
    assert read_table(path)["error"].tolist() == ["line one line two"]


def test_cut_at_every_offset_drops_the_row_reports_and_appends_cleanly(full_run, tmp_path):
    last = VARIANTS[1].name
    for offset, run in torn_copies(full_run, tmp_path):
        start_of_row = offset == (full_run / RESULTS).read_bytes().rstrip(b"\n").rfind(b"\n") + 1
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            table = read_table(run / RESULTS)
            assert done_variants(run) == {VARIANTS[0].name}, offset
        assert table["variant"].tolist() == [VARIANTS[0].name], offset
        assert start_of_row or any("torn last line" in str(w.message) for w in caught), offset
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = write_report(run).read_text()
            assert VARIANTS[0].name in report and last not in report, offset
            append_rows(run / RESULTS, [ok_row(VARIANTS[1])], RESULT_COLUMNS)  # what the resumed variant writes
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the file is whole again: no torn line left to warn about
            assert read_table(run / RESULTS)["variant"].tolist() == [v.name for v in VARIANTS], offset
        shutil.rmtree(run)


def test_resume_reruns_the_torn_variant(full_run, tmp_path, tiny_data, monkeypatch):
    """The real resume path (run_matrix) at the first, a middle and the last offset of the row."""
    cuts = list(torn_copies(full_run, tmp_path))
    cfg = RunConfig(data_root=str(tiny_data), train_ids=[], val_ids=[], device=torch.device("cpu"), progress=False)
    for offset, run in (cuts[0], cuts[len(cuts) // 2], cuts[-1]):
        calls = []
        monkeypatch.setattr(run_module, "measure", lambda v, cfg, ctx=None: calls.append(v.name) or
                            VariantResult(ok_row(v), [], []))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert run_matrix(VARIANTS, cfg, run, {}, resume=True) == 0
        assert calls == [VARIANTS[1].name], offset
        assert read_table(run / RESULTS)["variant"].tolist() == [v.name for v in VARIANTS]


# ---- every row checked, not only the last; damaged files a one-line error; atomic writes

THREE = [Variant("add", batch_size=8), Variant("mul", batch_size=8), Variant("concat", batch_size=8)]


def three_rows(tmp_path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    append_rows(run / RESULTS, [ok_row(v) for v in THREE], RESULT_COLUMNS)
    return run


def edit_line(path, number: int, edit) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[number - 1] = edit(lines[number - 1])
    path.write_text("".join(lines))


def set_cell(column, value):
    index = RESULT_COLUMNS.index(column)
    return lambda line: ",".join(value if i == index else c for i, c in enumerate(line.rstrip("\n").split(","))) + "\n"


BAD_ROWS = {  # a damage of line 3 (the mul row) -> what the warning says
    "cut mid-line": (lambda line: line[:len(line) // 3] + "\n", r"fields where the header has"),
    "two rows joined": (lambda line: line.rstrip("\n") + "," + line, r"fields where the header has"),
    "text in a number column": (set_cell("sec_per_epoch", "1.0s"), r"sec_per_epoch is '1.0s', not a number"),
    "unknown status": (set_cell("status", "running"), r"status 'running' is not one of ok, failed"),
}


@pytest.mark.parametrize("damage", BAD_ROWS, ids=list(BAD_ROWS))
def test_a_bad_row_in_the_middle_is_dropped_naming_its_line(tmp_path, damage):
    run = three_rows(tmp_path)
    edit, said = BAD_ROWS[damage]
    edit_line(run / RESULTS, 3, edit)
    with pytest.warns(TableWarning, match=rf"{run / RESULTS} line 3: .*{said}.*row dropped.*--resume runs it again"):
        table = read_table(run / RESULTS)
    assert table["variant"].tolist() == [THREE[0].name, THREE[2].name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert done_variants(run) == {THREE[0].name, THREE[2].name}


def test_resume_reruns_a_row_cut_in_the_middle_and_leaves_a_clean_table(tmp_path, tiny_data, monkeypatch):
    run = three_rows(tmp_path)
    edit_line(run / RESULTS, 3, lambda line: line[:40] + "\n")
    calls = []
    monkeypatch.setattr(run_module, "measure", lambda v, cfg, ctx=None: calls.append(v.name) or VariantResult(ok_row(v), [], []))
    cfg = RunConfig(data_root=str(tiny_data), train_ids=[], val_ids=[], device=torch.device("cpu"), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert run_matrix(THREE, cfg, run, {}, resume=True) == 0
    assert calls == [THREE[1].name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewrite kept only whole rows
        assert sorted(read_table(run / RESULTS)["variant"]) == sorted(v.name for v in THREE)


def test_a_foreign_header_is_an_error_naming_the_file(tmp_path):
    (tmp_path / RESULTS).write_text("name,score\nx,1\n")
    with pytest.raises(RunDirError, match=rf"^{tmp_path / RESULTS}: not a fusionbench results.csv"):
        read_table(tmp_path / RESULTS)


@pytest.mark.parametrize("text, said", [('{"torch": "2.', "not valid JSON"), ("[]", "expected a JSON object, found list"),
                                        ('"cpu"', "expected a JSON object, found str")])
def test_a_damaged_env_json_is_an_error_naming_the_file(tmp_path, text, said):
    (tmp_path / ENV).write_text(text)
    with pytest.raises(RunDirError, match=rf"^{tmp_path / ENV}: {said}") as error:
        read_env(tmp_path)
    assert "\n" not in str(error.value)


def no_space(*args):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_write_leaves_the_last_good_table(tmp_path, monkeypatch):
    run = three_rows(tmp_path)
    before = (run / RESULTS).read_bytes()
    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(RunDirError, match=rf"^cannot write {run / RESULTS}: No space left on device$"):
        append_rows(run / RESULTS, [ok_row(Variant("late", batch_size=8))], RESULT_COLUMNS)
    assert (run / RESULTS).read_bytes() == before
    assert [p.name for p in run.iterdir()] == [RESULTS]  # no temporary file left


def test_a_failed_plot_leaves_the_last_good_plot(tmp_path, monkeypatch):
    from reports.plots import write_plots
    run = three_rows(tmp_path)
    first = write_plots(run)
    before = {p: p.read_bytes() for p in first}
    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(RunDirError, match="No space left on device"):
        write_plots(run)
    assert {p: p.read_bytes() for p in first} == before and all(before.values())
    assert sorted(p.name for p in (run / "plots").iterdir()) == sorted(p.name for p in first)


def test_a_full_disk_mid_run_keeps_every_file_whole(tmp_path, tiny_data, monkeypatch):
    """On a small tmpfs with two pages free, a variant finishes and its files no longer fit: one
    error line, every file whole (no 0-byte table, report or plot), no temporary file left."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a tmpfs")
    try:
        run = disk / "run"
        run.mkdir()
        append_rows(run / RESULTS, [ok_row(THREE[0])], RESULT_COLUMNS)
        write_report(run)
        handle = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):
            while True:
                os.write(handle, b"\0" * 4096)
        os.ftruncate(handle, os.fstat(handle).st_size - 8192)
        os.close(handle)
        monkeypatch.setattr(run_module, "measure", lambda v, cfg, ctx=None: VariantResult(
            ok_row(v), [{"variant": v.name, "epoch": e, "train_samples_per_s": 10.0 + e} for e in range(200)], []))
        cfg = RunConfig(data_root=str(tiny_data), train_ids=[], val_ids=[], device=torch.device("cpu"), progress=False)
        with pytest.raises(RunDirError, match=r"^cannot write .*: No space left on device$"):
            run_matrix(THREE[1:], cfg, run, {}, resume=True)
        files = [p for p in run.rglob("*") if p.is_file()]
        assert all(p.stat().st_size > 0 for p in files), [p.name for p in files]
        assert not [p for p in files if p.name.endswith(".tmp")]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # whole rows only: the last good state
            assert read_table(run / RESULTS)["variant"].iloc[0] == THREE[0].name
        assert "# fusionbench run" in (run / "report.md").read_text()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


# ---- the report says what a reader must know: interrupted, resumed, noisy, scored, eager

def report_of(run, rows, curves=(), plan=None) -> str:
    from reports.results import CURVE_COLUMNS, CURVES, write_plan
    run.mkdir(exist_ok=True)
    append_rows(run / RESULTS, rows, RESULT_COLUMNS)
    if curves:
        append_rows(run / CURVES, list(curves), CURVE_COLUMNS)
    if plan:
        write_plan(run, [{"variant": v.name, "seed": 42, "world_size": 1} for v in plan])
    return write_report(run).read_text()


def stamped(variant, session, start, code="abc1234"):
    return {**ok_row(variant), "session": session, "code_version": code,
            "started_at": f"2026-12-02T0{start}:00:00+00:00", "finished_at": f"2026-12-02T0{start}:05:00+00:00"}


def test_the_report_names_the_planned_runs_without_a_row(tmp_path):
    report = report_of(tmp_path / "run", [ok_row(THREE[0]), {**ok_row(THREE[1]), "status": "failed"}], plan=THREE)
    assert f"**Interrupted**: 1 of the 3 planned runs have no row (the run stopped before them, or a damaged row " \
           f"was dropped): {THREE[2].name}." in report
    assert f"--resume {tmp_path / 'run'}" in report
    assert "Interrupted" not in report_of(tmp_path / "done", [ok_row(v) for v in THREE], plan=THREE)


def test_the_report_of_a_run_still_going_says_so(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    code = ("import fcntl, sys; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
            "f.write('pid 4242 on elsewhere\\n'); f.flush(); print('ready', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run / "run.lock")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        report = report_of(run, [ok_row(THREE[0])], plan=THREE)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert "**In progress**: pid 4242 on elsewhere is still running; 2 of the 3 planned runs have no row yet" in report
    assert "Interrupted" not in report


def test_the_report_shows_which_rows_a_resumed_process_made(tmp_path):
    report = report_of(tmp_path / "run", [stamped(THREE[0], "s1", 1), stamped(THREE[1], "s2", 3, "def5678")])
    assert "## Sessions" in report and "from 2 processes: the run was resumed" in report
    first, second = (line for line in report.splitlines() if line.startswith(("| s1", "| s2")))
    assert "abc1234" in first and THREE[0].name in first and "2026-12-02T01:00:00+00:00" in first
    assert "def5678" in second and THREE[1].name in second
    single = report_of(tmp_path / "one", [stamped(THREE[0], "s1", 1), stamped(THREE[1], "s1", 1)])
    assert "## Sessions" not in single and "Every row comes from one process (session `s1`" in single


def epochs(variant, rates):
    return [{"variant": variant.name, "seed": 42, "repeat": 0, "epoch": e, "train_samples_per_s": r}
            for e, r in enumerate(rates)]


def test_the_report_warns_where_epochs_spread_more_than_the_threshold(tmp_path):
    steady, noisy = THREE[0], THREE[1]
    report = report_of(tmp_path / "run", [ok_row(steady), ok_row(noisy)],
                       curves=epochs(steady, [100, 101, 99]) + epochs(noisy, [100, 60, 140]))
    warning = next(line for line in report.splitlines() if line.startswith("**Noisy**"))
    assert "1 of 2 variants spread more than 5 %" in warning and "max/min 2.33" in warning
    assert noisy.name in warning and steady.name not in warning
    quiet = report_of(tmp_path / "quiet", [ok_row(steady)], curves=epochs(steady, [100, 101, 99]))
    assert "Noisy" not in quiet and "Spread of the steady training samples/s" in quiet
    one = report_of(tmp_path / "one", [ok_row(steady)], curves=epochs(steady, [100]))
    assert "one timed epoch, so the spread of its speed on this machine is not measured" in one


def test_the_report_counts_scored_validation_samples_and_no_compile_time_for_eager(tmp_path):
    eager = {**ok_row(Variant("add", batch_size=8)), "val_samples": 10, "compile_s": 0.1}
    compiled = {**ok_row(Variant("add", batch_size=4, compile_mode="default")), "val_samples": 10, "compile_s": 12.5}
    report = report_of(tmp_path / "run", [eager, compiled])
    seed_rows = [line for line in report.split("## Speed")[0].splitlines() if line.startswith("| add")]
    assert [cells.split("|")[5].strip() for cells in seed_rows] == ["8", "8"]  # 10 // 8 * 8 and 10 // 4 * 4
    assert "`val scored` samples" in report
    speed_rows = [line for line in report.split("## Speed")[1].split("## Compiler")[0].splitlines()
                  if line.startswith("| add")]
    header = next(line for line in report.split("## Speed")[1].splitlines() if line.startswith("| variant"))
    column = [c.strip() for c in header.split("|")].index("compile s")
    assert [row.split("|")[column].strip() for row in speed_rows] == ["n/a", "12.5"]

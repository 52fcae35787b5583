"""Faults of the run directory, one row each: a live run under --force, damaged tables and
env.json, a read-only folder, a full disk. Each row builds its case under tmp_path, runs
`python -m bench`, and checks the exit code and the one line it prints (an error, or a warning
for a run that still reports). A full disk needs root (a small tmpfs) and skips without it."""

import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from reports.results import ENV, RESULT_COLUMNS, RESULTS, append_rows, write_env

from conftest import REPO, bench, write_dataset


@dataclass
class Fault:
    name: str
    setup: Callable[[Path], list[str]]  # builds the case under tmp_path, returns the bench argv
    exit_code: int
    message: str  # a regex the one-line error must match


CHILDREN: list[subprocess.Popen] = []  # processes a case keeps alive while its command runs
MOUNTS: list[Path] = []  # tmpfs mounts a case made


@pytest.fixture(autouse=True)
def _clean_up():
    yield
    while CHILDREN:
        child = CHILDREN.pop()
        child.stdin.close()  # the holder waits on its stdin
        child.wait(timeout=60)
    while MOUNTS:
        subprocess.run(["umount", "-l", str(MOUNTS.pop())], check=False)


# ---------------------------------------------------------------- building blocks

def data(tmp: Path) -> Path:
    """A tiny valid dataset (noise images): 32 train and 8 val samples, enough for batch 4 and
    the data check that precedes a run."""
    return write_dataset(tmp / "data", per_class=20)


def all_argv(tmp: Path, *extra) -> list[str]:
    return ["all", "--data", data(tmp), "--arch", "add", "--epochs", "1", "--batch-size", "4", "--device", "cpu",
            "--no-progress", "--profile", "quick", *extra]


def row(variant: str, **cells) -> dict:
    return {"variant": variant, "arch": "add", "batch_size": 8, "compile_mode": "none", "loader": "resident",
            "loader_form": "png", "precision": "fp32", "memory_format": "contiguous", "downsample": "maxpool",
            "channels": "seed", "seed": 42, "world_size": 1, "status": "ok", "epochs": 1, "train_samples": 16,
            "val_samples": 10, "params": 1, "val_loss": 0.5, "accuracy": 50.0, "sec_per_epoch": 1.0,
            "train_samples_per_s": 10.0, "target_acc": 99.0, "peak_mem_kind": "process_peak_rss", "peak_mem_mb": 1.0,
            **cells}


def finished_run(run: Path, rows=("a", "b", "c")) -> Path:
    """A run directory as `bench all` leaves it (env.json with settings, results.csv)."""
    run.mkdir(parents=True, exist_ok=True)
    write_env(run, {"schema_version": 2, "hardware": "cpu-test", "settings": {"epochs": 1}})
    append_rows(run / RESULTS, [row(name) for name in rows], RESULT_COLUMNS)
    return run


def edit_results(run: Path, line: int, edit: Callable[[str], str]) -> Path:
    """results.csv with its line `line` (1 = the header) rewritten by `edit`."""
    lines = (run / RESULTS).read_text().splitlines(keepends=True)
    lines[line - 1] = edit(lines[line - 1])
    (run / RESULTS).write_text("".join(lines))
    return run


def set_cell(column: str, value: str) -> Callable[[str], str]:
    index = RESULT_COLUMNS.index(column)
    return lambda text: ",".join(value if i == index else cell for i, cell in enumerate(text.rstrip("\n").split(","))) + "\n"


def hold_lock(run: Path) -> None:
    """Another `bench all` writing `run`: a process that opened it and holds run.lock until the test ends."""
    code = ("import sys; from bench.parent.rundir import open_run_dir; "
            f"held = open_run_dir({str(run)!r}, {{}}, {{}}); print('ready', flush=True); sys.stdin.read()")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    CHILDREN.append(child)
    assert child.stdout.readline().strip() == "ready"


def tmpfs(path: Path, size: str = "1m") -> Path:
    """A small tmpfs at `path` (root only; the case skips where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a tmpfs")
    MOUNTS.append(path)
    return path


def read_only(folder: Path) -> None:
    """Makes `folder` unwritable: a read-only remount of its tmpfs as root (root ignores modes), else chmod."""
    if os.geteuid() == 0:
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    else:
        folder.chmod(0o555)


def fill(disk: Path) -> None:
    """Writes a filler file until the disk has no block left."""
    handle = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(handle, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(handle)


def disk_run(tmp: Path, build: Callable[[Path], Path]) -> Path:
    """A run built by `build` on a tmpfs of its own (or a plain folder without root, for read-only by chmod)."""
    disk = tmp / "disk"
    if os.geteuid() == 0:
        tmpfs(disk)
    return build(disk / "run")


# ---------------------------------------------------------------- the cases

def force_on_a_live_run(tmp: Path) -> list[str]:
    hold_lock(tmp / "run")
    return all_argv(tmp, "--out", tmp / "run", "--force")


def row_cut_mid_line(tmp: Path) -> list[str]:
    run = edit_results(finished_run(tmp / "run"), 3, lambda text: text[:len(text) // 2] + "\n")
    return ["report", run]


def text_in_a_number_column(tmp: Path) -> list[str]:
    return ["report", edit_results(finished_run(tmp / "run"), 2, set_cell("accuracy", "high"))]


def unknown_status(tmp: Path) -> list[str]:
    return ["report", edit_results(finished_run(tmp / "run"), 2, set_cell("status", "done"))]


def foreign_header(tmp: Path) -> list[str]:
    run = finished_run(tmp / "run")
    (run / RESULTS).write_text("name,score\nx,1\n")
    return ["report", run]


def truncated_env(tmp: Path) -> Path:
    run = finished_run(tmp / "run")
    text = (run / ENV).read_text()
    (run / ENV).write_text(text[:len(text) // 2])
    return run


def env_not_an_object(tmp: Path) -> Path:
    run = finished_run(tmp / "run")
    (run / ENV).write_text("[]")
    return run


def report_read_only(tmp: Path) -> list[str]:
    run = disk_run(tmp, finished_run)
    (run / "report.md").write_text("# the last good report\n")
    read_only(run.parent)
    return ["report", run]


def resume_read_only(tmp: Path) -> list[str]:
    argv = all_argv(tmp)
    run = disk_run(tmp, finished_run)
    read_only(run.parent)
    return argv + ["--resume", run]


def report_on_a_full_disk(tmp: Path) -> list[str]:
    disk = tmpfs(tmp / "disk")
    run = finished_run(disk / "run")
    (run / "report.md").write_text("# the last good report\n")
    fill(disk)
    return ["report", run]


FAULTS = [
    Fault("--force on a run another process holds", force_on_a_live_run, 2, r"run is in use by pid \d+ .*run\.lock"),
    Fault("a row cut mid-line, file newline-terminated", row_cut_mid_line, 0,
          r"^warning: .*results\.csv line 3: \d+ fields where the header has \d+ .*row dropped"),
    Fault("text in a numeric column", text_in_a_number_column, 0,
          r"^warning: .*results\.csv line 2: accuracy is 'high', not a number; row dropped"),
    Fault("a status neither ok nor failed", unknown_status, 0,
          r"^warning: .*results\.csv line 2: status 'done' is not one of ok, failed"),
    Fault("results.csv of another program", foreign_header, 2,
          r"^error: .*results\.csv: not a fusionbench results\.csv \(its header has no column variant, status\)$"),
    Fault("truncated env.json: report", lambda tmp: ["report", truncated_env(tmp)], 2,
          r"^error: .*env\.json: not valid JSON \(.*\); the file is damaged$"),
    Fault("truncated env.json: compare", lambda tmp: ["compare", finished_run(tmp / "good"), truncated_env(tmp)], 2,
          r"^error: .*env\.json: not valid JSON"),
    Fault("truncated env.json: --resume", lambda tmp: all_argv(tmp, "--resume", truncated_env(tmp)), 2,
          r"^error: .*env\.json: not valid JSON"),
    Fault("env.json holding [] : compare", lambda tmp: ["compare", finished_run(tmp / "good"), env_not_an_object(tmp)], 2,
          r"^error: .*env\.json: expected a JSON object, found list$"),
    Fault("env.json holding [] : report", lambda tmp: ["report", env_not_an_object(tmp)], 2,
          r"^error: .*env\.json: expected a JSON object, found list$"),
    Fault("read-only run directory: report", report_read_only, 2,
          r"^error: cannot write .*report\.md: (Read-only file system|Permission denied)$"),
    Fault("read-only run directory: --resume", resume_read_only, 2,
          r"^error: cannot open .*run\.lock: (Read-only file system|Permission denied)"),
    Fault("full disk: report", report_on_a_full_disk, 2, r"^error: cannot write .*report\.md: No space left on device$"),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_fault(fault: Fault, tmp_path):
    done = bench(*fault.setup(tmp_path))
    assert done.returncode == fault.exit_code, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert any(re.search(fault.message, line) for line in done.stderr.splitlines()), done.stderr

"""Faults as a user meets them, in two tables of fault, command, exit code and one-line message:
FAULTS (bad input, refused before anything is written) and RUN_DIR_FAULTS (a run directory that
is live, damaged, read-only or on a full disk).

Every FAULTS case must stop before any training with exit code 2, an error matching its message (a
regex), no traceback, and nothing written: no run directory, nothing in the data folder (all of
the case's folder is compared before and after). Exit code 1 means only "a variant failed" and
is never a refusal. The data is the tiny hand-written set of conftest (12 samples).

The commands of each table run as `python -m bench` does (bench.cli.main, exit code and stderr as
a shell sees them), all in one Python process, one after the other: importing torch once instead
of once per case keeps each table at seconds. Permission cases need a user that file modes bind; as root,
which reads and writes anything, they skip.
"""

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from bench.parent.rundir import lock, open_run_dir
from conftest import REPO, write_dataset
from loaders.dataset import discover_ids
from loaders.split import make_split, save_split
from reports.results import ENV, RESULT_COLUMNS, RESULTS, append_rows, write_env

BAD_INPUT = 2
BENCHMARKS = Path(__file__).parent / "fixtures" / "benchmarks"
HELD = []  # run.lock handles a case holds while the commands run


@dataclass
class Fault:
    name: str
    setup: Callable[[Path], list[str]]  # builds the case under tmp_path, returns the bench argv
    exit_code: int
    message: str  # a regex the one-line error must match


def data(tmp_path: Path) -> Path:
    """12 valid samples (10 train, 2 val) with their split.json, so a run writes nothing there;
    made once per case, so a setup may damage it before run_all points at it."""
    root = tmp_path / "data"
    if not root.exists():
        write_dataset(root, per_class=6)
        save_split(make_split(discover_ids(root)), root / "split.json")
    return root


def run_all(tmp_path: Path, *options) -> list[str]:
    """`bench all` of one small variant on the tiny data, with `options` last (they win); without
    --out it would write runs/<timestamp> in tmp_path, which the test sees."""
    return ["all", "--data", data(tmp_path), "--arch", "add", "--epochs", "1", "--batch-size", "2",
            "--workers", "0", "--no-progress", *options]


def on_damaged_data(change: Callable[[Path], object]) -> Callable[[Path], list[str]]:
    """A setup: `bench all` on the tiny data after `change(data root)`."""
    def setup(tmp_path: Path) -> list[str]:
        change(data(tmp_path))
        return run_all(tmp_path)
    return setup


def a_run(tmp_path: Path) -> Path:
    """A run directory as `bench all` starts it (env.json with its settings, results.csv)."""
    open_run_dir(tmp_path / "run", {"epochs": 3}, {}).close()
    return tmp_path / "run"


def locked(tmp_path: Path) -> Path:
    """A folder whose run.lock another process (the test's) holds."""
    (tmp_path / "run").mkdir()
    HELD.append(lock(tmp_path / "run"))
    return tmp_path / "run"


def without_access(path: Path, mode: int) -> Path:
    """`path` chmod-ed to `mode`; skips where the modes do not bind (root)."""
    path.chmod(mode)
    if os.access(path, os.W_OK):
        pytest.skip("root reads and writes any folder; file modes bind only a user")
    return path


def under_read_only(tmp_path: Path) -> Path:
    (tmp_path / "ro").mkdir()
    return without_access(tmp_path / "ro", 0o555) / "run"


def split_file(tmp_path: Path, **lists) -> Path:
    split = {**make_split(discover_ids(data(tmp_path))), **lists}
    return save_split(split, tmp_path / "my-split.json")


def gate_json(tmp_path: Path) -> Path:
    """A real pytest-benchmark recording whose cases lost their hardware key."""
    doc = json.loads((BENCHMARKS / "cpu-noise-b.json").read_text())
    for case in doc["benchmarks"]:
        del case["extra_info"]["hardware_key"]
    (tmp_path / "current.json").write_text(json.dumps(doc))
    return tmp_path / "current.json"


def junk(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


FAULTS = [
    # option values, refused by their argparse type before anything is read
    Fault("seeds negative", lambda t: run_all(t, "--seeds", "42,-1"), BAD_INPUT,
          r"^error: argument --seeds: expected an integer from 0 to 2\*\*64 - 1 .*, got '-1'"),
    Fault("seed negative", lambda t: run_all(t, "--seed", "-5"), BAD_INPUT,
          r"^error: argument --seed: expected an integer from 0"),
    Fault("workers negative", lambda t: run_all(t, "--workers", "-2"), BAD_INPUT,
          r"^error: argument --workers: expected an integer of 0"),
    Fault("batch size 0", lambda t: run_all(t, "--batch-size", "0"), BAD_INPUT,
          r"^error: argument --batch-size: expected an integer of at least 1, got '0'"),
    Fault("target accuracy over 100", lambda t: run_all(t, "--target-acc", "150"), BAD_INPUT,
          r"^error: argument --target-acc: expected a percentage above 0 and at most 100, got '150'"),
    Fault("unknown loader", lambda t: run_all(t, "--loader", "webdataset"), BAD_INPUT,
          r"^error: argument --loader: webdataset not one of torch, resident, dali"),
    Fault("unknown device", lambda t: run_all(t, "--device", "tpu"), BAD_INPUT,
          r"^error: --device tpu: expected cpu, cuda or cuda:N"),
    # options that qualify another, or contradict one
    Fault("compile mode without --compile", lambda t: run_all(t, "--compile-mode", "max-autotune"), BAD_INPUT,
          r"^error: --compile-mode max-autotune needs --compile \(without it every variant runs eager\)"),
    Fault("amp dtype without --amp", lambda t: run_all(t, "--amp-dtype", "fp16"), BAD_INPUT,
          r"^error: --amp-dtype fp16 needs --amp"),
    Fault("scaling without --nproc", lambda t: run_all(t, "--scaling"), BAD_INPUT,
          r"^error: --scaling needs --nproc N with N >= 2"),
    Fault("resume and force", lambda t: run_all(t, "--resume", a_run(t), "--force"), BAD_INPUT,
          r"^error: --force moves a run aside and --resume continues it"),
    Fault("variants matching none", lambda t: run_all(t, "--variants", "resnet*"), BAD_INPUT,
          r"^error: --variants resnet\* matches none of the \d+ variants"),
    # options checked against the split, once it is known and before the data check
    Fault("batch larger than the train split", lambda t: run_all(t, "--batch-size", "2,64"), BAD_INPUT,
          r"^error: --batch-size 64: larger than the train split's 10 samples"),
    Fault("inference batch larger than the val split", lambda t: run_all(t, "--infer-batch-sizes", "8"), BAD_INPUT,
          r"^error: --infer-batch-sizes 8: larger than the val split's 2 samples"),
    # --kernels: the table is read and checked on a CPU too
    Fault("kernels table missing", lambda t: run_all(t, "--kernels", t / "nowhere.csv"), BAD_INPUT,
          r"^error: --kernels \S+nowhere.csv: no such file or folder"),
    Fault("kernels table junk", lambda t: run_all(t, "--kernels", junk(t / "kernels.csv", b"speed\nfast\n")), BAD_INPUT,
          r"^error: --kernels \S+kernels.csv: lacks (\d+) of the \1 columns of a kernels table, e.g. kernel"),
    # folders refused, before the data check where the folder alone decides
    Fault("out is a file", lambda t: run_all(t, "--out", junk(t / "notes.txt", b"x")), BAD_INPUT,
          r"^error: --out \S+notes.txt is a file, not a folder"),
    Fault("out parent read-only", lambda t: run_all(t, "--out", under_read_only(t)), BAD_INPUT,
          r"^error: --out \S+/ro/run: cannot write in \S+/ro "),
    Fault("out on an existing run", lambda t: run_all(t, "--out", a_run(t)), BAD_INPUT,
          r"^error: --out \S+run already holds a run; continue it with --resume"),
    Fault("out on a locked folder", lambda t: run_all(t, "--out", locked(t)), BAD_INPUT,
          r"^error: \S+run is in use by pid \d+"),
    Fault("resume of a folder without a run", lambda t: run_all(t, "--resume", t), BAD_INPUT,
          r"^error: --resume \S+: no results.csv there \(is it a run directory\?\)"),
    Fault("resume with other settings", lambda t: run_all(t, "--resume", a_run(t)), BAD_INPUT,
          r"^error: --resume \S+run: its rows were made with other settings"),
    Fault("report of a folder without a run", lambda t: ["report", t], BAD_INPUT,
          r"^error: \S+ has no results.csv or loaders.csv \(is it a run directory\?\)"),
    # the data: each message names the file and what is wrong with it
    Fault("data is a file", lambda t: run_all(t, "--data", junk(t / "data.zip", b"PK")), BAD_INPUT,
          r"^error: dataset folder \S+data.zip is a file, not a folder"),
    Fault("lidar folder unreadable", on_damaged_data(lambda r: without_access(r / "cubes" / "lidar", 0)), BAD_INPUT,
          r"^error: cannot read folder \S+cubes/lidar: Permission denied"),
    Fault("zenith table of the wrong length", on_damaged_data(lambda r: np.save(r / "cubes" / "zenith.npy", np.zeros(32))),
          BAD_INPUT, r"^error: 1 problem in the 12 samples checked:\n  \S+cubes/zenith.npy has 32 angles, but every checked"),
    Fault("zero-byte PNG", on_damaged_data(lambda r: junk(r / "cubes" / "rgb" / "0001.png", b"")), BAD_INPUT,
          r"\n  cannot decode PNG \S+cubes/rgb/0001.png: the file is empty \(0 bytes\)"),
    Fault("text file named PNG", on_damaged_data(lambda r: junk(r / "spheres" / "rgb" / "0002.png", b"<html>")), BAD_INPUT,
          r"\n  cannot decode PNG \S+spheres/rgb/0002.png: not a PNG file \(it starts with b'<html>'\)"),
    Fault("empty train list", lambda t: run_all(t, "--split", split_file(t, train=[])), BAD_INPUT,
          r"^error: \S+my-split.json: the train list is empty"),
    # the other commands' options
    Fault("loaders workers negative", lambda t: ["loaders", "--data", data(t), "--workers", "-1"], BAD_INPUT,
          r"^error: argument --workers: expected an integer of 0 or more"),
    Fault("compare level over 1", lambda t: ["compare", t / "a", t / "b", "--level", "99"], BAD_INPUT,
          r"^error: argument --level: expected a number between 0 and 1"),
    Fault("gate JSON without hardware key", lambda t: ["gate", BENCHMARKS / "cpu-noise-a.json", gate_json(t)], BAD_INPUT,
          r"^error: \S+current.json: 4 of 4 cases have no extra_info.hardware_key"),
]


# Runs [(cwd, argv), ...] read from stdin through bench.cli.main and prints [(exit code, stderr)]:
# what `python -m bench` gives a shell (bench/__main__.py is sys.exit(main())), case after case.
RUN_CASES = """
import contextlib, io, json, os, sys, traceback
from bench.cli import main
outcomes = []
for cwd, argv in json.load(sys.stdin):
    os.chdir(cwd)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse, or a message: what the interpreter would do with it
            code = stop.code if isinstance(stop.code, int) else (print(stop.code, file=sys.stderr) or 1)
        except BaseException:
            traceback.print_exc()
            code = 1
    outcomes.append((code, stderr.getvalue()))
print(json.dumps(outcomes))
"""


def tree(root: Path) -> dict:
    """Every path under `root` with its size and modification time; but run.lock's: --resume
    takes the lock before it reads the run (no writer may race it) and names itself there."""
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")
            if p.name != "run.lock"}


def run_cases(faults: list[Fault], tmp_path_factory, prefix: str) -> dict:
    """{fault name: (exit code, stderr, whether its folder changed)}, or the reason it skips: each
    case's setup in a folder of its own, then every command in one Python process (RUN_CASES)."""
    cases, found = [], {}
    try:
        for index, fault in enumerate(faults):
            folder = tmp_path_factory.mktemp(f"{prefix}{index}")
            try:
                cases.append((fault.name, folder, [str(arg) for arg in fault.setup(folder)]))
            except pytest.skip.Exception as skip:
                found[fault.name] = str(skip)
        before = [tree(folder) for _, folder, _ in cases]
        done = subprocess.run([sys.executable, "-c", RUN_CASES], input=json.dumps([(str(f), a) for _, f, a in cases]),
                              capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:  # the locks, lock holders and mounts the cases made
        while HELD:
            HELD.pop().close()
        _clean_up()
    assert done.returncode == 0, done.stderr
    for (name, folder, _), (code, stderr), old in zip(cases, json.loads(done.stdout), before):
        found[name] = (code, stderr, tree(folder) != old)
    for folder in (folder for _, folder, _ in cases):  # readable again for pytest's clean-up
        for path in [folder, *folder.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)
    return found


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict:
    return run_cases(FAULTS, tmp_path_factory, "fault")


@pytest.mark.parametrize("fault", FAULTS, ids=lambda fault: fault.name)
def test_fault(fault: Fault, outcomes: dict):
    if isinstance(outcomes[fault.name], str):
        pytest.skip(outcomes[fault.name])
    code, stderr, wrote = outcomes[fault.name]
    assert code == fault.exit_code, stderr
    assert re.search(fault.message, stderr, re.MULTILINE), stderr
    assert stderr.startswith("error: ") and "Traceback" not in stderr, stderr
    assert not wrote, "the command wrote into its folder (a run directory, or the data folder)"


# ---------------------------------------------------------------------------------------------
# Faults of the run directory, run like FAULTS (one process for all): a live run under --force,
# damaged tables and env.json, a read-only folder, a full disk. Each keeps the last good state and
# prints one line (an error, or a warning for a run that still reports). A full disk needs root
# (a small tmpfs) and skips without it.

CHILDREN: list[subprocess.Popen] = []  # processes a case keeps alive while its command runs
MOUNTS: list[Path] = []  # tmpfs mounts a case made


def _clean_up() -> None:
    """Ends the lock holders and unmounts the tmpfs mounts the cases made."""
    while CHILDREN:
        child = CHILDREN.pop()
        child.stdin.close()  # the holder waits on its stdin
        child.wait(timeout=60)
    while MOUNTS:
        subprocess.run(["umount", "-l", str(MOUNTS.pop())], check=False)


def noise_data(tmp: Path) -> Path:
    """A tiny valid dataset (noise images): 32 train and 8 val samples, enough for batch 4 and
    the data check that precedes a run."""
    return write_dataset(tmp / "data", per_class=20)


def all_argv(tmp: Path, *extra) -> list[str]:
    return ["all", "--data", noise_data(tmp), "--arch", "add", "--epochs", "1", "--batch-size", "4", "--device", "cpu",
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


RUN_DIR_FAULTS = [
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


@pytest.fixture(scope="module")
def run_dir_outcomes(tmp_path_factory) -> dict:
    return run_cases(RUN_DIR_FAULTS, tmp_path_factory, "run-dir-fault")


@pytest.mark.parametrize("fault", RUN_DIR_FAULTS, ids=lambda fault: fault.name)
def test_run_dir_fault(fault: Fault, run_dir_outcomes: dict):
    if isinstance(run_dir_outcomes[fault.name], str):
        pytest.skip(run_dir_outcomes[fault.name])
    code, stderr, _ = run_dir_outcomes[fault.name]
    assert code == fault.exit_code, stderr
    assert "Traceback" not in stderr, stderr
    assert any(re.search(fault.message, line) for line in stderr.splitlines()), stderr

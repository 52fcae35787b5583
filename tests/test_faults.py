"""Bad input as a user meets it: each fault, the command, its exit code and its one-line error.

Every case must stop before any training with exit code 2, an error matching its message (a
regex), no traceback, and nothing written: no run directory, nothing in the data folder (all of
the case's folder is compared before and after). Exit code 1 means only "a variant failed" and
is never a refusal. The data is the tiny hand-written set of conftest (12 samples).

The commands run as `python -m bench` does (bench.cli.main, exit code and stderr as a shell sees
them), all in one Python process, one after the other: importing torch once instead of once per
case keeps the table at seconds. Permission cases need a user that file modes bind; as root,
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
          r"^error: --kernels \S+kernels.csv: lacks 12 of the 12 columns of a kernels table, e.g. kernel"),
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
    """Every path under `root` with its size and modification time."""
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict:
    """{fault name: (exit code, stderr, whether its folder changed)}, or the reason it skips."""
    cases, found = [], {}
    for index, fault in enumerate(FAULTS):
        folder = tmp_path_factory.mktemp(f"fault{index}")
        try:
            cases.append((fault.name, folder, [str(arg) for arg in fault.setup(folder)]))
        except pytest.skip.Exception as skip:
            found[fault.name] = str(skip)
    before = [tree(folder) for _, folder, _ in cases]
    try:
        done = subprocess.run([sys.executable, "-c", RUN_CASES], input=json.dumps([(str(f), a) for _, f, a in cases]),
                              capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        while HELD:
            HELD.pop().close()
    assert done.returncode == 0, done.stderr
    for (name, folder, _), (code, stderr), old in zip(cases, json.loads(done.stdout), before):
        found[name] = (code, stderr, tree(folder) != old)
    for folder in (folder for _, folder, _ in cases):  # readable again for pytest's clean-up
        for path in [folder, *folder.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)
    return found


@pytest.mark.parametrize("fault", FAULTS, ids=lambda fault: fault.name)
def test_fault(fault: Fault, outcomes: dict):
    if isinstance(outcomes[fault.name], str):
        pytest.skip(outcomes[fault.name])
    code, stderr, wrote = outcomes[fault.name]
    assert code == fault.exit_code, stderr
    assert re.search(fault.message, stderr, re.MULTILINE), stderr
    assert stderr.startswith("error: ") and "Traceback" not in stderr, stderr
    assert not wrote, "the command wrote into its folder (a run directory, or the data folder)"

"""A run directory that knows what it is: one run per folder, resumed only with the same settings.

Rows are only comparable when they were made with the same settings, so `--out` on an existing
run is refused (unless --force moves the old run aside), `--resume` compares the settings that
shape results with those recorded in env.json and refuses on any difference, and a lock file
keeps a second process out of a folder in use, --force included. env.json is written once, when
the run starts, and never rewritten by a resume: it always describes the rows beside it. plan.json
lists the runs the run set out to make, and every row names the process (session) and code that
made it and when, so a report can say what is missing and which rows a resume added.
"""

import fcntl
import functools
import hashlib
import json
import os
import signal
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import pandas as pd

from reports.results import (CURVE_COLUMNS, CURVES, ENV, INFERENCE, INFERENCE_COLUMNS, LOCK, RESULT_COLUMNS, RESULTS,
                             STEP_COLUMNS, STEPS, RunDirError, append_rows, read_env, read_table, write_env, write_plan,
                             write_rows)

SETTINGS_KEY = "settings"


def run_dir_path(out: str | None, prefix: str = "") -> Path:
    """The run directory's path; created by the first file written, so bad input leaves none behind."""
    return Path(out) if out else Path("runs") / f"{prefix}{datetime.now():%Y%m%d-%H%M%S}"


def code_version() -> str:
    """`git describe --always --dirty` of the checkout the code runs from, else the package version."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=here, capture_output=True,
                             text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return metadata.version("fusionbench")
    except metadata.PackageNotFoundError:
        return "unknown"


def split_fingerprint(split: dict) -> str:
    """A hash of the split's seed and id lists, in order (the order feeds the shuffle)."""
    text = json.dumps({k: split[k] for k in ("seed", "train", "val")}, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def differences(recorded: dict, current: dict) -> list[str]:
    """One line per setting whose value differs, e.g. "epochs: run 3, now 5"."""
    return [f"{key}: run {recorded.get(key, '(not recorded)')!r}, now {current[key]!r}"
            for key in current if recorded.get(key) != current[key]]


def timestamp() -> str:
    """Now, in UTC to the second: when a row's run started and finished."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


PROCESS_STARTED = datetime.now()  # names this process's session (imported as a run begins)


@functools.cache
def session() -> dict:
    """The columns naming the process that writes a row and its code, the same on all its rows:
    rows of a resumed run differ here from those of the first process."""
    return {"session": f"{PROCESS_STARTED:%Y%m%d-%H%M%S}-{os.getpid()}", "code_version": code_version()}


def row_stamp(started_at: str) -> dict:
    """A results row's time and provenance columns: started_at, finished_at (now), session, code_version."""
    return {"started_at": started_at, "finished_at": timestamp(), **session()}


def lock(run_dir: Path):
    """An exclusive lock on run_dir/run.lock, held as long as the returned file stays open; the
    kernel drops it when the process ends, however it ends, so no stale lock is left behind."""
    try:
        handle = open(run_dir / LOCK, "a+")
    except OSError as error:
        raise RunDirError(f"cannot open {run_dir / LOCK}: {error.strerror or error} "
                          "(a run directory must be writable to run into it)") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunDirError(f"{run_dir} is in use by {holder} (lock {run_dir / LOCK}); "
                          "wait for it to finish or choose another --out") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
    handle.flush()
    return handle


def _move_aside(run_dir: Path) -> Path:
    """Renames an old run out of the way, holding its lock meanwhile: a run another process is
    still writing is refused, not moved from under it."""
    aside = run_dir.with_name(f"{run_dir.name}.old-{datetime.now():%Y%m%d-%H%M%S}")
    with lock(run_dir):
        run_dir.rename(aside)
    print(f"--force: moved the existing run {run_dir} to {aside}")
    return aside


def open_run_dir(run_dir: Path, settings: dict, env: dict, resume: bool = False, force: bool = False,
                 plan: list[dict] | None = None):
    """Creates or reopens `run_dir` for a run with `settings` and the planned runs `plan`
    ({variant, seed, world_size} each); returns the held lock.

    New run: refuses a folder holding a run (env.json or results.csv) unless `force`, writes env.json with
    the settings, plan.json and a header-only results.csv, so even a run interrupted before its first
    variant can be resumed. Resume: refuses unless env.json records the same settings; adds its
    runs to the plan.
    """
    run_dir = Path(run_dir)
    if resume:
        held = lock(run_dir)  # first: nothing is read while another process may be writing
        try:
            check_resumable(run_dir, settings)
            drop_unfinished_rows(run_dir)
            write_plan(run_dir, plan or [])
        except BaseException:
            held.close()
            raise
        return held
    if (run_dir / ENV).exists() or (run_dir / RESULTS).exists():  # other files (a fallback split.json) are no run
        if not force:
            raise RunDirError(f"--out {run_dir} already holds a run; continue it with --resume {run_dir}, "
                              "or pass --force to move it aside")
        _move_aside(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    held = lock(run_dir)
    write_env(run_dir, {**env, SETTINGS_KEY: settings})
    write_plan(run_dir, plan or [])
    append_rows(run_dir / RESULTS, [], RESULT_COLUMNS)
    return held


def check_resumable(run_dir: Path, settings: dict) -> None:
    """Refuses a resume unless env.json records the same settings, listing every difference."""
    recorded = read_env(run_dir).get(SETTINGS_KEY)
    if recorded is None:
        raise RunDirError(f"--resume {run_dir}: no {ENV} with the run's settings there "
                          "(is it a run directory made before run settings were recorded?)")
    changed = differences(recorded, settings)
    if changed:
        raise RunDirError(f"--resume {run_dir}: its rows were made with other settings:\n  "
                          + "\n  ".join(changed) + "\nrun with the recorded settings, or start a new --out")


def drop_unfinished_rows(run_dir: Path) -> None:
    """Removes curve and inference rows of variants without a results row (a run stopped between
    writing them and its result row), so the resumed re-run does not add a second copy."""
    results = read_table(run_dir / RESULTS)
    for name, columns in ((CURVES, CURVE_COLUMNS), (INFERENCE, INFERENCE_COLUMNS), (STEPS, STEP_COLUMNS)):
        table = read_table(run_dir / name, key=None)
        if table.empty:
            continue
        key = [k for k in ("variant", "seed") if k in table and k in results]  # (variant, seed) since --seeds
        kept = table[pd.MultiIndex.from_frame(table[key]).isin(pd.MultiIndex.from_frame(results[key]))] if len(results) \
            else table.iloc[:0]
        if len(kept) < len(table):
            write_rows(run_dir / name, kept.to_dict("records"), columns)


def sigterm_as_interrupt() -> None:
    """SIGTERM (timeout, job schedulers) ends the run like Ctrl-C: report written, resume printed."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")
    signal.signal(signal.SIGTERM, handler)

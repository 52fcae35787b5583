"""Runs one job (a variant's measurement, the NVML overhead probe) in a fresh worker process.

A worker (`python -m bench.worker SPEC RESULT`, or one torchrun group of N ranks for --nproc N)
starts from a clean allocator, compiler and CUDA state, so a variant's memory and speed are its
own, and whatever kills it (a segfault, a sticky CUDA error, the kernel's OOM killer, a hang past
--variant-timeout) costs that variant only: the parent raises WorkerDied with the cause and the
last lines of the worker's stderr, and the matrix records a failed row and goes on. The worker's
stdout is the console's; its stderr (progress bars, warnings) is copied to the console as it
comes and its tail kept for the error.
"""

import codecs
import collections
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

MEASURE = "bench.worker.runner:measure"
PRELOAD = "bench.worker.runner"  # what a spare worker imports while it waits
STDERR_TAIL_LINES = 5
KILL_GRACE_S = 10.0  # after SIGTERM, before SIGKILL: torchrun's agent ends its ranks in that time
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the checkout whose bench the parent runs


class WorkerDied(RuntimeError):
    """A worker that ended without handing back a result or an exception."""


@dataclass(frozen=True)
class Isolation:
    """How the matrix starts its workers: `target` runs each variant (tests name a worker that
    crashes), `timeout_s` is --variant-timeout, `nproc` ranks form one torchrun group."""
    target: str = MEASURE
    timeout_s: float | None = None
    nproc: int = 1


def worker_command(spec: Path, result: Path, nproc: int = 1, preload: str | None = None) -> list[str]:
    """`python -m bench.worker SPEC RESULT [PRELOAD]` (with PRELOAD it imports that module, then
    waits for a line on stdin before it reads SPEC), or under torchrun one group of nproc ranks
    that is not restarted when a rank fails (torchrun then ends the others)."""
    if nproc == 1:
        return [sys.executable, "-m", "bench.worker", str(spec), str(result), *filter(None, [preload])]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "--max-restarts=0", "-m", "bench.worker", str(spec), str(result)]


class Worker:
    """One worker process and its folder (spec, result, errors), used for one job. With `preload`
    it starts now and waits for its spec (a spare); else it starts once its spec is written."""

    def __init__(self, nproc: int = 1, preload: str | None = None):
        self.folder = Path(tempfile.mkdtemp(prefix="bench-worker-"))
        self.spec, self.result = self.folder / "spec.pkl", self.folder / "result.pkl"
        self.command = worker_command(self.spec, self.result, nproc, preload)
        self.tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self.process = self.copier = None
        if preload is not None:
            self.process, self.copier = _start(self.command, self.tail)

    def run(self, target: str, args: tuple, timeout_s: float | None):
        """target(*args) in this worker: its return value, or the exception it raised re-raised here."""
        self.spec.write_bytes(pickle.dumps({"target": target, "args": args}))
        if self.process is None:
            self.process, self.copier = _start(self.command, self.tail)
        else:
            try:
                self.process.stdin.write(b"go\n")
            except BrokenPipeError:  # it died while it waited: its exit status says how
                pass
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass
        returncode = _wait(self.process, timeout_s)
        self.copier.join(timeout=5)
        errors = sorted(self.folder.glob(f"{self.result.name}.error.*"), key=lambda p: p.stat().st_mtime_ns)
        if errors:  # the first rank to fail; the others failed after it, or were ended
            raise pickle.loads(errors[0].read_bytes())
        if returncode == 0 and self.result.exists():
            return pickle.loads(self.result.read_bytes())
        raise WorkerDied(death_cause(returncode, list(self.tail), timeout_s))

    def close(self) -> None:
        """Ends the process if it still runs and removes its folder."""
        if self.process is not None and self.process.poll() is None:
            _end(self.process)
        shutil.rmtree(self.folder, ignore_errors=True)


class Workers:
    """The workers of `jobs` one-process jobs, each used once. While a variant runs, the next
    worker is already started and has imported torch and the measurement path (it touches no CUDA
    until its spec comes), so a variant does not wait for Python and torch to start; a torchrun
    group (nproc > 1) starts when its variant does."""

    def __init__(self, jobs: int, preload: str = PRELOAD):
        self.jobs_left, self.preload = jobs, preload
        self._spare = Worker(preload=preload) if jobs > 0 else None  # starts while the parent prepares

    def run(self, target: str, *args, timeout_s: float | None = None, nproc: int = 1):
        self.jobs_left -= 1
        if nproc > 1:
            return run_in_worker(target, *args, timeout_s=timeout_s, nproc=nproc)
        worker, self._spare = self._spare or Worker(preload=self.preload), None
        try:
            if self.jobs_left > 0:
                self._spare = Worker(preload=self.preload)
            return worker.run(target, args, timeout_s)
        finally:
            worker.close()

    def close(self) -> None:
        if self._spare is not None:
            self._spare.close()
            self._spare = None

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_in_worker(target: str, *args, timeout_s: float | None = None, nproc: int = 1):
    """target(*args) in a fresh process (or torchrun group): its return value, or the exception it
    raised re-raised here."""
    worker = Worker(nproc)
    try:
        return worker.run(target, args, timeout_s)
    finally:
        worker.close()


def death_cause(returncode: int | None, stderr_tail: list[str], timeout_s: float | None) -> str:
    """Why a worker ended without a result, in one line: the time limit, the signal or the exit code,
    then the last lines of its stderr."""
    if returncode is None:
        cause = f"worker ran past --variant-timeout {timeout_s:g} s and was killed"
    elif returncode < 0:
        name = signal.Signals(-returncode).name
        cause = f"worker killed by {name}" + (" (out of memory? the kernel's OOM killer sends it)"
                                               if name == "SIGKILL" else "")
    else:
        cause = f"worker exited with code {returncode} without a result"
    return cause + ("; its stderr ended: " + " | ".join(stderr_tail) if stderr_tail else "")


def _start(command: list[str], tail: collections.deque) -> tuple[subprocess.Popen, threading.Thread]:
    """The worker in its own process group (Ctrl-C reaches the parent alone, which then ends it),
    importing this checkout's bench, with a thread copying its stderr and keeping the tail."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env, process_group=0)
    copier = threading.Thread(target=_copy_stderr, args=(process.stderr, tail), daemon=True)
    copier.start()
    return process, copier


def _wait(process: subprocess.Popen, timeout_s: float | None) -> int | None:
    """The exit status, or None when the worker ran past the time limit and was ended."""
    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        _end(process)
        return None
    except BaseException:  # Ctrl-C or SIGTERM in the parent: the worker must not outlive it
        _end(process)
        raise


def _copy_stderr(stream, tail: collections.deque) -> None:
    """Copies the worker's stderr to ours as it arrives (progress bars redraw with \\r, so bytes,
    not lines) and keeps its last non-empty lines."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    while chunk := os.read(stream.fileno(), 65536):
        text = decoder.decode(chunk)
        sys.stderr.write(text)
        sys.stderr.flush()
        *lines, pending = (pending + text).replace("\r", "\n").split("\n")
        tail.extend(line.strip() for line in lines if _says_something(line))
    if _says_something(pending):
        tail.append(pending.strip())


def _says_something(line: str) -> bool:
    """Not blank and not a rule of ===== (torchrun frames its failure report with them)."""
    return any(c.isalnum() for c in line)


def _end(process: subprocess.Popen) -> None:
    """SIGTERM to the worker's group (torchrun's agent passes it to its ranks), SIGKILL if it lingers."""
    for sig, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue

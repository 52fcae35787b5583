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
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

MEASURE = "bench.worker.runner:measure"
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


def worker_command(spec: Path, result: Path, nproc: int = 1) -> list[str]:
    """`python -m bench.worker SPEC RESULT`, or under torchrun one group of nproc ranks that is not
    restarted when a rank fails (torchrun then ends the others)."""
    if nproc == 1:
        return [sys.executable, "-m", "bench.worker", str(spec), str(result)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "--max-restarts=0", "-m", "bench.worker", str(spec), str(result)]


def run_in_worker(target: str, *args, timeout_s: float | None = None, nproc: int = 1):
    """target(*args) in a fresh process; its return value, or the exception it raised re-raised here."""
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as folder:
        spec, result = Path(folder) / "spec.pkl", Path(folder) / "result.pkl"
        spec.write_bytes(pickle.dumps({"target": target, "args": args}))
        returncode, tail = _run(worker_command(spec, result, nproc), timeout_s)
        errors = sorted(Path(folder).glob(f"{result.name}.error.*"), key=lambda p: p.stat().st_mtime_ns)
        if errors:  # the first rank to fail; the others failed after it, or were ended
            raise pickle.loads(errors[0].read_bytes())
        if returncode == 0 and result.exists():
            return pickle.loads(result.read_bytes())
        raise WorkerDied(death_cause(returncode, tail, timeout_s))


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


def _run(command: list[str], timeout_s: float | None) -> tuple[int | None, list[str]]:
    """(exit status, or None past the time limit; the last lines of stderr). The worker runs in its
    own process group, so Ctrl-C reaches the parent alone, which then ends the worker."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, process_group=0)
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
    copier = threading.Thread(target=_copy_stderr, args=(process.stderr, tail), daemon=True)
    copier.start()
    try:
        returncode = process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        _end(process)
        returncode = None
    except BaseException:  # Ctrl-C or SIGTERM in the parent: the worker must not outlive it
        _end(process)
        raise
    copier.join(timeout=5)
    return returncode, list(tail)


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

"""`python -m bench.worker SPEC RESULT [PRELOAD]`: run one job of the parent in this fresh process.

SPEC is a pickle of {"target": "module:function", "args": [...]} written by
bench.parent.launcher; the function's return value is pickled to RESULT, or, when it raises,
the exception to RESULT.error.RANK (the parent re-raises it, so a failed variant reads the same
as in one process). Started by torchrun (WORLD_SIZE > 1), the process joins the group first and
only rank 0 writes RESULT; a rank that raises exits 1, so torchrun's agent ends the other ranks
at once instead of leaving them in a collective until its timeout. With PRELOAD (a module) the
worker is a spare: it imports that module, then waits for a line on stdin, which the parent sends
once SPEC is written (end of input: the parent no longer needs it). Without it nothing is imported
before the target asks for it, so a target that needs no torch starts in milliseconds.
"""

import importlib
import os
import pickle
import sys
from pathlib import Path


def resolve(target: str):
    """The function named "package.module:function"."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def write(path: Path, value) -> None:
    """Pickled whole or not at all: the parent reads a file only once it is complete."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(pickle.dumps(value))
    os.replace(partial, path)


def error_path(result: Path, rank: int) -> Path:
    return result.with_name(f"{result.name}.error.{rank}")


def _join_group(args: list) -> list:
    """Under torchrun: joins the process group and gives a RunConfig among the args this rank's
    device and rank (the parent planned the run as rank 0 of WORLD_SIZE)."""
    from dataclasses import replace

    from bench import distributed
    from bench.config import RunConfig
    job = distributed.read_env()
    for index, arg in enumerate(args):
        if isinstance(arg, RunConfig):
            device = distributed.init(job, arg.device.type)
            args[index] = replace(arg, device=device, rank=job.rank, progress=arg.progress and job.rank == 0)
    return args


def _picklable(error: BaseException) -> BaseException:
    """The exception itself where it pickles (its type decides how the parent goes on), else a
    RuntimeError with its message."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def main(spec_path: str, result_path: str) -> int:
    spec = pickle.loads(Path(spec_path).read_bytes())
    result = Path(result_path)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        args = _join_group(list(spec["args"])) if world > 1 else list(spec["args"])
        value = resolve(spec["target"])(*args)
    except Exception as error:
        write(error_path(result, rank), _picklable(error))
        return 1
    if rank == 0:
        write(result, value)
    if world > 1:
        from bench import distributed
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        raise SystemExit("usage: python -m bench.worker SPEC RESULT [PRELOAD] (started by bench.parent.launcher)")
    if len(sys.argv) == 4:
        importlib.import_module(sys.argv[3])
        if not sys.stdin.readline():
            sys.exit(0)
    sys.exit(main(sys.argv[1], sys.argv[2]))

"""python -m bench: generate data, split it, list and run the variant matrix, time loaders, report,
compare runs and gate speed regressions."""

import argparse
import sys

from bench.commands import all as all_command
from bench.commands import compare, data, doctor, gate, history, kernels, loaders, prepare, report, split
from bench.commands import list as list_command

COMMANDS = {
    "data": data,
    "prepare": prepare,
    "split": split,
    "list": list_command,
    "all": all_command,
    "loaders": loaders,
    "report": report,
    "doctor": doctor,
    "compare": compare,
    "gate": gate,
    "history": history,
    "kernels": kernels,
}

# Exit codes, one meaning each (README, "Exit codes"). A command returns DONE or FAILED itself;
# BAD_INPUT and INTERRUPTED are decided here alone.
DONE = 0
FAILED = 1  # a variant, a doctor check, a loader or a gated case failed; everything else finished
BAD_INPUT = 2  # an option, a file or a folder refused before any work: bench.errors.UsageError and kin
INTERRUPTED = 130  # Ctrl-C or SIGTERM (128 + SIGINT, as shells report it)

# Bad input: UsageError, DatasetError, GateError and CompareError are ValueErrors; a folder that
# exists where a new one is made, or that may not be read or written, is an OSError of its own.
BAD_INPUT_ERRORS = (ValueError, FileExistsError, PermissionError)


class Parser(argparse.ArgumentParser):
    """argparse with its error on one line: the usage it prints first runs to 20 lines for
    `bench all`, which buries the message."""

    def error(self, message: str):
        self.exit(BAD_INPUT, f"error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    root = Parser(prog="python -m bench", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.add_parser(sub)
    return root


def _error_line(error: Exception) -> str:
    """`error: ...` naming the file: an OSError's own text is "[Errno 13] Permission denied: 'x'"."""
    if isinstance(error, OSError) and error.filename:
        return f"error: {error.filename}: {error.strerror}"
    return f"error: {error}"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args) or DONE
    except BAD_INPUT_ERRORS as error:
        print(_error_line(error), file=sys.stderr)
        return BAD_INPUT
    except KeyboardInterrupt:  # before a command had anything to save (bench all handles its own)
        print("\ninterrupted", file=sys.stderr)
        return INTERRUPTED

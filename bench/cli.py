"""python -m bench: generate data, split it, list and run the variant matrix, time loaders, report,
compare runs and gate speed regressions."""

import argparse
import sys

from bench.commands import all as all_command
from bench.commands import compare, data, doctor, gate, history, kernels, loaders, prepare, report, split
from bench.commands import list as list_command
from loaders.dataset import DatasetError

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


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.add_parser(sub)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args) or 0
    except (DatasetError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before a command had anything to save (bench all handles its own)
        print("\ninterrupted", file=sys.stderr)
        return 130

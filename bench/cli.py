"""python -m bench: generate data, split it, list and run the variant matrix, time loaders, report."""

import argparse
import sys

from bench.commands import all as all_command
from bench.commands import data, kernels, list as list_command, loaders, prepare, report, split
from loaders.dataset import DatasetError

COMMANDS = {"data": data, "prepare": prepare, "split": split, "list": list_command, "all": all_command,
            "loaders": loaders, "report": report, "kernels": kernels}


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

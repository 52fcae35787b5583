"""`bench list`: print the variant matrix the same flags would run, without running it."""

import torch

from bench.options import add_matrix_args, default_profile, matrix


def add_parser(sub) -> None:
    add_matrix_args(sub.add_parser("list", help="print the variant matrix without running it"))


def run(args) -> None:
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    for variant in matrix(args, args.profile or default_profile(device_type)):
        print(variant.name)

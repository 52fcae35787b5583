"""`bench data`: render a synthetic dataset in the NVIDIA assessment layout."""

import argparse

from bench.options import check_new_folder, positive, seed_value


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="generate a synthetic dataset in the NVIDIA assessment layout")
    p.add_argument("--out", default="data/synthetic", help="folder to write (must not hold a dataset already)")
    p.add_argument("--per-class", type=positive, default=3000)
    p.add_argument("--seed", type=seed_value, default=42)
    p.add_argument("--prepare", action="store_true", help="also pack it into the raw form DALI reads without decoding")


def run(args) -> None:
    from bench.commands import prepare
    from loaders.generate import generate_dataset
    check_new_folder(args.out)
    root = generate_dataset(args.out, per_class=args.per_class, seed=args.seed)
    print(f"wrote {2 * args.per_class} samples to {root}")
    if args.prepare:
        prepare.run(argparse.Namespace(data=str(root)))

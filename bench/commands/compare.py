"""`bench compare RUN_A RUN_B ...`: runs side by side, as ratios to the first, with verdicts."""

import argparse

from bench.options import check_new_folder, fraction, positive
from bench.parent.rundir import run_dir_path


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="compare run directories (hardware setups) variant by variant")
    p.add_argument("runs", nargs="+", help="run directories; ratios are to the first")
    p.add_argument("--out", help="output folder (default runs/compare-<timestamp>)")
    p.add_argument("--level", type=fraction, default=0.99, help="bootstrap interval level (default 0.99)")
    p.add_argument("--alpha", type=fraction, default=0.01, help="Mann-Whitney U significance (default 0.01)")
    p.add_argument("--margin", type=fraction, default=0.05, help="equivalence margin for 'same' (default 0.05 = 5%%)")
    p.add_argument("--min-samples", type=positive, default=5, help="per-epoch windows needed a side (default 5); "
                   "with fewer, the per-step times decide")
    p.add_argument("--min-steps", type=positive, default=30, help="per-step times needed a side (default 30)")
    p.add_argument("--price", metavar="KEY=USD_PER_HOUR,...|FILE", type=prices,
                   help="price per hour of each hardware key (or a CSV/JSON file of them): adds dollars per "
                   "million training samples and per network trained to the target")


def prices(spec: str) -> dict[str, float]:
    """argparse type for --price: argparse prints the one-line error and exits 2."""
    from reports.cost import parse_prices
    try:
        return parse_prices(spec)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def run(args) -> int:
    from reports.compare import load_runs, write_compare
    out = run_dir_path(args.out, "compare-")
    check_new_folder(out)
    runs = load_runs(args.runs)
    for path in write_compare(runs, out, level=args.level, alpha=args.alpha, margin=args.margin,
                              min_samples=args.min_samples, min_steps=args.min_steps, prices=args.price):
        print(path)
    return 0

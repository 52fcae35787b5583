"""`bench split`: write a seeded, stratified split JSON."""

from pathlib import Path

from bench.options import fraction, seed_value


def add_parser(sub) -> None:
    p = sub.add_parser("split", help="write a seeded, stratified split JSON")
    p.add_argument("--data", required=True)
    p.add_argument("--out", help="default: DATA/split.json")
    p.add_argument("--seed", type=seed_value, default=42)
    p.add_argument("--val-fraction", type=fraction, default=0.2)


def run(args) -> None:
    from loaders.dataset import discover_ids
    from loaders.split import make_split, save_split
    split = make_split(discover_ids(args.data), args.val_fraction, args.seed)
    path = save_split(split, args.out or Path(args.data) / "split.json")
    print(f"wrote {path}: {len(split['train'])} train, {len(split['val'])} val (seed {args.seed})")

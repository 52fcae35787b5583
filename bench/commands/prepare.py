"""`bench prepare`: pack a dataset into the raw arrays the DALI loader reads without decoding."""


def add_parser(sub) -> None:
    p = sub.add_parser("prepare", help="pack a dataset into raw arrays for the DALI loader")
    p.add_argument("--data", required=True)


def run(args) -> None:
    from loaders.dataset import discover_ids
    from loaders.prepare import prepare_dataset
    discover_ids(args.data)
    print(f"prepared arrays in {prepare_dataset(args.data)}")

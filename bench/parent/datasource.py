"""Finding the dataset and its split for a command: generated on first use, validated always."""

from pathlib import Path

from loaders.dataset import DatasetError, discover_ids
from loaders.generate import generate_dataset
from loaders.split import load_split, make_split, save_split

DEFAULT_DATA = Path("data") / "synthetic"
SPLIT_FILE = "split.json"


def resolve_data(data: str | None, per_class: int = 3000, seed: int = 42, progress: bool = True) -> tuple[Path, list[str]]:
    """(root, ids): --data as given, else the default synthetic set, generated if it is not there."""
    if data is not None:
        root = Path(data).expanduser()
        return root, discover_ids(root)
    root = DEFAULT_DATA
    if not (root / "cubes").is_dir():
        print(f"No --data given: generating {2 * per_class} synthetic samples in {root} (seed {seed})")
        generate_dataset(root, per_class=per_class, seed=seed, progress=progress)
    return root, discover_ids(root)


def resolve_split(root: Path, ids: list[str], split: str | None, seed: int = 42) -> tuple[dict, Path | None]:
    """(split, path): --split as given, else root/split.json; without either a new split, made in
    memory, with no path: store_split writes it once the data check has passed, so a broken
    dataset leaves nothing in its folder (a stale split would fail the next run)."""
    if split is not None:
        return load_split(split, ids), Path(split)
    path = root / SPLIT_FILE
    if path.exists():
        return load_split(path, ids), path
    return make_split(ids, seed=seed), None


def store_split(split: dict, root: Path, fallback_dir: Path | None = None) -> Path:
    """Saves a split made by resolve_split as root/split.json, or in `fallback_dir` (the run
    directory) where the data folder is read-only."""
    path = Path(root) / SPLIT_FILE
    try:
        return save_split(split, path)
    except OSError:
        if fallback_dir is None:
            raise DatasetError(f"cannot write {path}; pass --split FILE or --out") from None
        return save_split(split, Path(fallback_dir) / SPLIT_FILE)

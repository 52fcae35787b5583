"""Seeded, stratified train/val splits stored as the seed's JSON {seed, train, val}."""

import json
import random
from pathlib import Path

from loaders.dataset import DatasetError, label_of

MIN_PRIOR, MAX_PRIOR = 0.01, 0.99


def make_split(ids: list[str], val_fraction: float = 0.2, seed: int = 42) -> dict:
    """Each class is shuffled with its own seeded RNG and cut at the same fraction.

    The lists are shuffled again as a whole so a prefix of either list is still balanced.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    rng = random.Random(seed)
    train, val = [], []
    for label in (0, 1):
        members = sorted(i for i in ids if label_of(i) == label)
        rng.shuffle(members)
        n_val = round(len(members) * val_fraction)
        val += members[:n_val]
        train += members[n_val:]
    rng.shuffle(train)
    rng.shuffle(val)
    split = {"seed": seed, "train": train, "val": val}
    check_split(split, set(ids), source="the new split")
    return split


def check_split(split: dict, known_ids: set[str], source: str) -> None:
    """Leakage, unknown ids and a missing class are errors, as in the seed's checks."""
    for key in ("seed", "train", "val"):
        if key not in split:
            raise DatasetError(f"{source} has no {key!r} key (expected {{seed, train, val}})")
    for key in ("train", "val"):
        unknown = [i for i in split[key] if i not in known_ids]
        if unknown:
            raise DatasetError(f"{source}: {len(unknown)} {key} ids are not in the dataset, e.g. {unknown[:3]}")
        labels = {label_of(i) for i in split[key]}
        if labels != {0, 1}:
            raise DatasetError(f"{source}: the {key} split has only class {sorted(labels)}; both cubes and spheres are needed")
    leaked = set(split["train"]) & set(split["val"])
    if leaked:
        raise DatasetError(f"{source}: data leakage, {len(leaked)} ids are in both train and val, e.g. {sorted(leaked)[:3]}")


def save_split(split: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(split, indent=1))
    return path


def load_split(path: str | Path, known_ids: list[str]) -> dict:
    path = Path(path)
    try:
        split = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DatasetError(f"cannot read split file {path}: {error}") from None
    if not isinstance(split, dict):
        raise DatasetError(f"split file {path} must hold a JSON object {{seed, train, val}}")
    check_split(split, set(known_ids), source=str(path))
    return split


def stratified_subset(ids: list[str], n: int | None) -> list[str]:
    """The first n ids keeping both classes in their proportion (the lists are pre-shuffled)."""
    if n is None or n >= len(ids):
        return list(ids)
    by_label = {label: [i for i in ids if label_of(i) == label] for label in (0, 1)}
    n_sphere = round(n * len(by_label[1]) / len(ids))
    chosen = set(by_label[0][: n - n_sphere] + by_label[1][:n_sphere])
    return [i for i in ids if i in chosen]


def check_class_prior(labels, what: str = "first training batch") -> float:
    """The seed's guard: a batch of (nearly) one class means the loader is not shuffling."""
    prior = float(sum(int(x) for x in labels)) / max(len(labels), 1)
    if prior < MIN_PRIOR or prior > MAX_PRIOR:
        raise DatasetError(
            f"the {what} is extremely imbalanced (class prior {prior:.4f}); the model would memorise "
            "label ordering. Recreate the split or check the loader's shuffling."
        )
    return prior

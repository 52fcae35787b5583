"""Seeded, stratified train/val splits stored as the seed's JSON {seed, train, val}."""

import json
import random
from collections import Counter
from pathlib import Path

from scipy.stats import binomtest

from loaders.dataset import DatasetError, label_of

FALSE_ALARM_RATE = 1e-6


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
        if not isinstance(split[key], list) or not all(isinstance(i, str) for i in split[key]):
            kind = type(split[key]).__name__
            raise DatasetError(f"{source}: {key!r} must be a list of sample id strings, got {kind}")
        if not split[key]:
            raise DatasetError(f"{source}: the {key} list is empty; both cubes and spheres are needed in it")
        repeated = sorted(i for i, n in Counter(split[key]).items() if n > 1)
        if repeated:
            raise DatasetError(f"{source}: {len(repeated)} {key} ids appear more than once, e.g. {repeated[:3]}")
        unknown = [i for i in split[key] if i not in known_ids]
        if unknown:
            raise DatasetError(f"{source}: {len(unknown)} {key} ids are not in the dataset, e.g. {unknown[:3]}")
        labels = {label_of(i) for i in split[key]}
        if labels != {0, 1}:
            only = "cubes" if labels == {0} else "spheres"
            raise DatasetError(f"{source}: the {key} list has only {only}; both cubes and spheres are needed")
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


def class_share(ids: list[str]) -> float:
    """The fraction of class 1 (spheres) among `ids`."""
    return sum(label_of(i) for i in ids) / max(len(ids), 1)


def check_class_prior(labels, share: float = 0.5, what: str = "first training batch") -> float:
    """The seed's guard, made statistical: a batch far more one-sided than shuffling gives means
    the split or the loader's order is broken.

    A shuffled batch of n samples from a split whose class-1 share is `share` holds a binomial
    number of class 1; the guard trips when the two-sided exact binomial test puts the batch's
    count below FALSE_ALARM_RATE (1e-6), so a correct loader trips it by chance at most once in
    a million batches, at any batch size. At batch 32 on a balanced split that means 0-2 or 30-32
    of one class; at batch 8 not even a one-class batch trips it (chance 1 in 128): a batch that
    small cannot tell a broken order from luck. Returns the batch's class-1 share.
    """
    n, ones = len(labels), sum(int(x) for x in labels)
    if n == 0 or not 0 < share < 1:
        return ones / max(n, 1)
    p_value = binomtest(ones, n, share).pvalue
    if p_value < FALSE_ALARM_RATE:
        raise DatasetError(
            f"the {what} holds {ones} of {n} samples of class 1 where the split has {100 * share:.0f}% "
            f"(chance {p_value:.1e} under shuffling); the model would memorise label ordering. "
            "Recreate the split or check the loader's shuffling.")
    return ones / n

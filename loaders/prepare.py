"""The prepared form: the whole dataset decoded once into raw arrays that DALI reads undecoded.

Format (folder `root/prepared` by default):

    rgba.npy      uint8   [N, H, W, 4]   row n is sample ids[n]
    depth.npy     float32 [N, H, W]
    azimuth.npy   float32 [C, H]         row k is the table of the class with label k
    zenith.npy    float32 [C, W]
    manifest.json format, version, source root, ids in row order, array shapes and dtypes, and
                  the files' signature (name, size, mtime of every file it was made from)

Why a few large arrays and not one .npy per sample: the row index *is* the pairing, so RGB, depth
and label cannot drift apart the way two file readers can (labels follow from the ids). The DALI
loader memory-maps the arrays and hands its `fn.external_source` one fancy-indexed slice per batch,
which is cheaper than opening 2 x 32 small files per step, and nothing is decoded or validated at
training time because `read_sample` validated every file here. The manifest is written last, so
an interrupted preparation leaves a folder that `find_prepared` rejects, and a file changed
after preparation changes the signature, so a stale folder is refused too.
"""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loaders.dataset import CLASSES, DatasetError, decode_split, discover_ids, sample_files

FORMAT = "fusionbench-prepared"
VERSION = 2
MANIFEST = "manifest.json"
ARRAYS = ("rgba", "depth", "azimuth", "zenith")


def prepare_dataset(root: str | Path, out: str | Path | None = None, progress: bool = True) -> Path:
    """Decode and validate every sample of `root` once and write the prepared form; returns its folder."""

    root = Path(root).expanduser()
    out = Path(out).expanduser() if out is not None else root / "prepared"
    ids = discover_ids(root)
    signature = files_signature(root, ids)
    decoded = decode_split(root, ids, progress=progress)  # first, so broken data leaves no folder
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # the folder is incomplete until the new manifest lands
    arrays = {name: decoded[name].numpy() for name in ARRAYS}
    for name, array in arrays.items():
        np.save(out / f"{name}.npy", np.ascontiguousarray(array))
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "source": str(root.resolve()),
        "ids": ids,
        "signature": signature,
        "arrays": {name: {"shape": list(array.shape), "dtype": str(array.dtype)} for name, array in arrays.items()},
    }
    temporary = out / (MANIFEST + ".tmp")
    temporary.write_text(json.dumps(manifest, indent=1))
    os.replace(temporary, out / MANIFEST)
    return out


def files_signature(root: Path, ids: list[str]) -> str:
    """A hash of the name, size and modification time of every file the prepared form is made
    from (images, depth maps, angle tables): cheap (no file is read) and changed by any rewrite."""
    paths = [root / folder / name for folder in sorted(CLASSES) for name in ("azimuth.npy", "zenith.npy")]
    paths += [path for i in ids for path in (sample_files(root, i).rgb, sample_files(root, i).lidar)]
    digest = hashlib.blake2b(digest_size=16)
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class Prepared:
    """A prepared folder opened for reading: memory-mapped arrays and the row of every id."""

    folder: Path
    ids: list[str]
    rgba: np.ndarray
    depth: np.ndarray
    azimuth: np.ndarray
    zenith: np.ndarray

    def rows(self, sample_ids: list[str]) -> np.ndarray:
        row_of = {sample_id: row for row, sample_id in enumerate(self.ids)}
        missing = [i for i in sample_ids if i not in row_of]
        if missing:
            raise DatasetError(f"{self.folder} has no sample {missing[0]!r} ({len(missing)} ids not prepared)")
        return np.array([row_of[i] for i in sample_ids], dtype=np.int64)


def _load(root: Path, folder: Path) -> Prepared | str:
    """The opened prepared form, or the reason it cannot be used for the dataset at `root`."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return f"{manifest_path} is missing (never prepared, or preparation was interrupted)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as error:
        return f"cannot read {manifest_path}: {error}"
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        return f"{manifest_path} is not {FORMAT} version {VERSION}"
    arrays = {}
    for name in ARRAYS:
        expected = manifest.get("arrays", {}).get(name)
        if expected is None:
            return f"{manifest_path} does not describe {name}.npy"
        try:
            array = np.load(folder / f"{name}.npy", mmap_mode="r")
        except (OSError, ValueError) as error:
            return f"cannot read {folder / (name + '.npy')}: {error}"
        if list(array.shape) != expected["shape"] or str(array.dtype) != expected["dtype"]:
            return f"{folder / (name + '.npy')} is {array.shape} {array.dtype}, the manifest says {expected}"
        arrays[name] = array
    ids = discover_ids(root)
    if manifest["ids"] != ids:
        added = sorted(set(ids) - set(manifest["ids"]))
        removed = sorted(set(manifest["ids"]) - set(ids))
        return (f"{folder} is stale: the dataset has {len(ids)} samples, {len(manifest['ids'])} were prepared "
                f"({len(added)} added, e.g. {added[:3]}; {len(removed)} removed, e.g. {removed[:3]})")
    if manifest.get("signature") != files_signature(root, ids):
        return f"{folder} is stale: files of {root} changed after it was prepared"
    return Prepared(folder, ids, **arrays)


def find_prepared(root: str | Path) -> Path | None:
    """root/prepared when it is complete and prepared from exactly the dataset's current ids, else None."""
    root = Path(root).expanduser()
    found = _load(root, root / "prepared")
    return found.folder if isinstance(found, Prepared) else None


def open_prepared(root: str | Path) -> Prepared:
    """The prepared form of `root`; a DatasetError says why it is unusable and how to rebuild it."""
    root = Path(root).expanduser()
    found = _load(root, root / "prepared")
    if isinstance(found, str):
        raise DatasetError(f"{found}; run `python -m bench prepare --data {root}` to (re)build it")
    return found

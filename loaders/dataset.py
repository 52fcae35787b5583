"""Reading the NVIDIA assessment layout: sample ids, RGBA images, depth maps and XYZA.

Every check names the file and what was expected, because a benchmark that silently trains on a
half-broken dataset produces numbers nobody can trust.
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

# folder name -> (id prefix, label)
CLASSES = {"cubes": ("cube", 0), "spheres": ("sphere", 1)}
PREFIX_TO_FOLDER = {prefix: folder for folder, (prefix, _) in CLASSES.items()}
NO_RETURN_DEPTH = 50.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# numpy parses every .npy header with ast.literal_eval, and CPython 3.11 shares the AST
# constructor's recursion counter between threads: a garbage collection that runs a finaliser
# mid-parse lets another thread's parse corrupt it ("SystemError: AST constructor recursion depth
# mismatch", python/cpython#106905). numpy has no header reader without literal_eval, so every
# .npy read of the loaders holds this lock; a 64x64 map takes microseconds, PNG decoding runs free.
_NPY_LOCK = threading.Lock()


class DatasetError(ValueError):
    """The dataset on disk is not what the harness expects; the message names the file."""


@dataclass(frozen=True)
class SampleFiles:
    rgb: Path
    lidar: Path
    label: int
    folder: str


def discover_ids(root: str | Path) -> list[str]:
    """All sample ids (cube_0000, sphere_0000, ...) with both an RGB and a LiDAR file."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} is a file, not a folder (expected the NVIDIA assessment layout)")
    ids = []
    for folder, (prefix, _) in CLASSES.items():
        rgb_stems = _stems(root / folder / "rgb", ".png")
        lidar_stems = _stems(root / folder / "lidar", ".npy")
        for name in ("azimuth.npy", "zenith.npy"):
            if not (root / folder / name).is_file():
                raise DatasetError(f"missing file {root / folder / name}")
        for stem in sorted(rgb_stems - lidar_stems):
            raise DatasetError(f"{root / folder / 'rgb' / (stem + '.png')} has no LiDAR file {root / folder / 'lidar' / (stem + '.npy')}")
        for stem in sorted(lidar_stems - rgb_stems):
            raise DatasetError(f"{root / folder / 'lidar' / (stem + '.npy')} has no RGB file {root / folder / 'rgb' / (stem + '.png')}")
        if not rgb_stems:
            raise DatasetError(f"no samples in {root / folder / 'rgb'} (expected NNNN.png files)")
        ids += [f"{prefix}_{stem}" for stem in sorted(rgb_stems)]
    return ids


def _stems(folder: Path, suffix: str) -> set[str]:
    """Names without `suffix` of the folder's files ending in it. An unreadable folder is an error
    of its own: glob() would list nothing, and every sample would seem to lack its file."""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        raise DatasetError(f"missing folder {folder} (expected the NVIDIA assessment layout)") from None
    except OSError as error:
        raise DatasetError(f"cannot read folder {folder}: {error.strerror}") from None
    return {name[: -len(suffix)] for name in names if name.endswith(suffix)}


def sample_files(root: str | Path, sample_id: str) -> SampleFiles:
    """Paths and label of one sample id."""
    prefix, _, stem = sample_id.partition("_")
    if prefix not in PREFIX_TO_FOLDER or not stem:
        raise DatasetError(f"unknown sample id {sample_id!r} (expected cube_NNNN or sphere_NNNN)")
    folder = PREFIX_TO_FOLDER[prefix]
    base = Path(root).expanduser() / folder
    return SampleFiles(base / "rgb" / f"{stem}.png", base / "lidar" / f"{stem}.npy", CLASSES[folder][1], folder)


def label_of(sample_id: str) -> int:
    prefix = sample_id.partition("_")[0]
    if prefix not in PREFIX_TO_FOLDER:
        raise DatasetError(f"unknown sample id {sample_id!r} (expected cube_NNNN or sphere_NNNN)")
    return CLASSES[PREFIX_TO_FOLDER[prefix]][1]


def load_npy(source) -> np.ndarray:
    """np.load of a path or file object, safe on any number of threads (see _NPY_LOCK)."""
    with _NPY_LOCK:
        return np.load(source)


def _load_vector(path: Path) -> np.ndarray:
    try:
        array = load_npy(path)
    except (OSError, ValueError) as error:
        raise DatasetError(f"cannot read {path}: {error}") from None
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
        raise DatasetError(f"{path} must be a 1-d array of finite angles in radians, got shape {array.shape} {array.dtype}")
    return array.astype(np.float32)


def load_angles(root: str | Path, folder: str) -> tuple[np.ndarray, np.ndarray]:
    """(azimuth [H], zenith [W]) of one class folder; azimuth indexes rows, zenith columns."""
    base = Path(root).expanduser() / folder
    return _load_vector(base / "azimuth.npy"), _load_vector(base / "zenith.npy")


def class_angles(root: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every class folder's angle tables, read once for all its samples."""
    return {folder: load_angles(root, folder) for folder in CLASSES}


def open_rgba(path: Path, source=None) -> Image.Image:
    """The decoded image as RGBA: 1-, 2- and 3-channel PNGs (L, LA, RGB, palette) are converted as
    PIL does, so images without alpha get an opaque one; an undecodable file is an error naming it.
    `source` (bytes or a file object) is decoded instead of reading `path` again."""
    try:
        with Image.open(path if source is None else source) as image:
            image.load()
            if image.mode != "RGBA":
                image = image.convert("RGBA")
    except UnidentifiedImageError:  # its message names the file object read ("<_io.BytesIO ...>"), not the file
        raise DatasetError(f"cannot decode PNG {path}: {_not_an_image(path, source)}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"cannot decode PNG {path}: {error}") from None
    return image


def _not_an_image(path: Path, source=None) -> str:
    """Why PIL found no image in a file: empty, or not a PNG (its first bytes), or a damaged one."""
    if source is None:
        with open(path, "rb") as file:
            head = file.read(len(PNG_SIGNATURE))
    else:
        source.seek(0)
        head = source.read(len(PNG_SIGNATURE))
    if not head:
        return "the file is empty (0 bytes)"
    if head != PNG_SIGNATURE:
        return f"not a PNG file (it starts with {head!r})"
    return "a PNG signature, but no image PIL can read after it"


def resize_to(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The image resized to (H, W) as the seed's transforms.Resize does on a PIL image (bilinear
    PIL resize; a no-op at the same size), so an image of any size fits its depth map."""
    height, width = size
    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.BILINEAR)


def angle_tables(root: str | Path, angles: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(azimuth [C, H], zenith [C, W]) with row k belonging to the class whose label is k, so a
    batch looks its tables up by label; from `angles` (class_angles) where already read."""
    angles = angles or class_angles(root)
    folders = sorted(CLASSES, key=lambda folder: CLASSES[folder][1])
    return np.stack([angles[f][0] for f in folders]), np.stack([angles[f][1] for f in folders])


def read_rgba(path: Path, size: tuple[int, int], source=None) -> np.ndarray:
    """The image as uint8 [H, W, 4], resized to `size` (the depth map's (H, W))."""
    return np.array(resize_to(open_rgba(path, source), size))


def read_depth(path: Path, azimuth: np.ndarray, zenith: np.ndarray, source=None) -> np.ndarray:
    """The depth map as float32 [H, W] (float16/float64 maps are converted), checked against the
    angle tables of its folder; NaN or infinite depth is an error (a no-return is 50, not inf)."""
    try:
        depth = load_npy(path if source is None else source)
    except (OSError, ValueError, EOFError) as error:
        raise DatasetError(f"cannot read depth map {path}: {error}") from None
    if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.number):
        raise DatasetError(f"{path} must be a 2-d numeric depth map, got shape {depth.shape} {depth.dtype}")
    if depth.shape != (len(azimuth), len(zenith)):
        raise DatasetError(
            f"{path} has shape {depth.shape} but azimuth.npy has {len(azimuth)} and zenith.npy "
            f"{len(zenith)} angles (expected depth shape (len(azimuth), len(zenith)))"
        )
    depth = depth.astype(np.float32)
    finite = np.isfinite(depth)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        raise DatasetError(f"{path} contains {int((~finite).sum())} non-finite depth values "
                           f"(first {depth[tuple(bad)]} at row {bad[0]}, column {bad[1]})")
    return depth


def read_sample(root: str | Path, sample_id: str, angles: dict | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """(rgba uint8 [H, W, 4] at the depth map's size, depth float32 [H, W], label), validated;
    `angles` (class_angles) saves reading the folder's tables again for every sample."""
    files = sample_files(root, sample_id)
    azimuth, zenith = angles[files.folder] if angles else load_angles(root, files.folder)
    depth = read_depth(files.lidar, azimuth, zenith)
    return read_rgba(files.rgb, depth.shape), depth, files.label


def depth_to_xyza(depth: torch.Tensor, azimuth: torch.Tensor, zenith: torch.Tensor) -> torch.Tensor:
    """LiDAR depth [..., H, W] -> XYZA [..., 4, H, W], as the seed study computes it.

    azimuth [..., H] is per row i, zenith [..., W] per column j (a batch may carry one table per
    sample); A is 1 where the beam returned (d < 50).
    """
    az = -azimuth[..., :, None]
    ze = -zenith[..., None, :]
    x = depth * torch.sin(az) * torch.cos(ze)
    y = depth * torch.cos(az) * torch.cos(ze)
    z = depth * torch.sin(ze)
    a = (depth < NO_RETURN_DEPTH).to(depth.dtype)
    return torch.stack([x, y, z, a], dim=-3)


def rgba_to_float(rgba: torch.Tensor) -> torch.Tensor:
    """uint8 [..., H, W, 4] -> float [..., 4, H, W] in [0, 1], like torchvision's ToTensor."""
    return rgba.movedim(-1, -3).float().div(255)


def prepare_batch(rgba: torch.Tensor, depth: torch.Tensor, azimuth: torch.Tensor, zenith: torch.Tensor,
                  kernel: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A raw batch on the device -> (rgb, lidar XYZA), fp32 as every loader yields them: the
    functions above, or with `kernel` the one-pass Triton kernel of kernels/input_prep (the same
    mathematics; chosen where `bench kernels` found it faster, kernels.select.use_kernel)."""
    if kernel:
        from kernels.input_prep import prepare_inputs
        return prepare_inputs(rgba, depth, azimuth, zenith)
    return rgba_to_float(rgba), depth_to_xyza(depth, azimuth, zenith)


def decode_split(root: str | Path, sample_ids: list[str], workers: int = 4, progress: bool = False) -> dict:
    """uint8 RGBA [N, H, W, 4], float depth [N, H, W], labels [N] and per-class angle tables."""
    root = str(Path(root).expanduser())
    angles = class_angles(root)
    with ThreadPoolExecutor(max(workers, 1)) as pool:
        samples = list(tqdm(pool.map(lambda i: read_sample(root, i, angles), sample_ids), total=len(sample_ids),
                            desc="decode", unit="sample", disable=not progress, leave=False))
    azimuth, zenith = angle_tables(root, angles)
    return {
        "rgba": torch.from_numpy(np.stack([s[0] for s in samples])),
        "depth": torch.from_numpy(np.stack([s[1] for s in samples])),
        "label": torch.tensor([s[2] for s in samples], dtype=torch.int64),
        "azimuth": torch.from_numpy(azimuth),
        "zenith": torch.from_numpy(zenith),
    }

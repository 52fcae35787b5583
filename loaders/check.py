"""The data check run once before the first variant: every sample opened, every problem named.

Without it a broken file fails each variant in turn (torch, resident) or crashes deep inside a
pipeline without a file name (DALI). Here each sample's image and depth map are read exactly as
the loaders read them (loaders.dataset: decodable, depth shape against the angle tables, finite
depth), on a thread pool with a progress bar, and the first problems are listed with their files.

Angle tables are checked against the depth maps, and a table of the wrong length is named once,
not blamed on every depth map of its folder.

Reading every byte anyway, the check also hashes the files: `fingerprint` identifies the
dataset's content (not its path or timestamps), so a run directory can tell whether a resumed
run reads the same data.
"""

import hashlib
import io
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from loaders.dataset import DatasetError, class_angles, read_depth, read_rgba, sample_files

SHOWN_PROBLEMS = 10


@dataclass(frozen=True)
class CheckResult:
    samples: int
    problems: list[str]  # one line per broken sample or angle table, naming its file
    fingerprint: str  # content hash of the checked files and angle tables

    def raise_if_broken(self, shown: int = SHOWN_PROBLEMS) -> None:
        """A DatasetError listing the first `shown` problems, when there are any."""
        if self.problems:
            lines = "\n".join(f"  {line}" for line in self.problems[:shown])
            more = f"\n  ... and {len(self.problems) - shown} more" if len(self.problems) > shown else ""
            count = f"{len(self.problems)} problem" + ("s" if len(self.problems) > 1 else "")
            raise DatasetError(f"{count} in the {self.samples} samples checked:\n{lines}{more}")


@dataclass(frozen=True)
class SampleCheck:
    digest: str  # content hash of the sample's two files
    problem: str  # "" when the sample reads as the loaders read it
    depth_shape: tuple | None  # from the .npy header; None when the file could not be read


def check_sample(root: str, sample_id: str, angles: dict) -> SampleCheck:
    """One sample read as the loaders read it, against its folder's tables in `angles`
    (class_angles); a broken one's depth shape comes from its header."""
    digest = hashlib.blake2b(sample_id.encode(), digest_size=16)
    depth_bytes = b""
    try:
        files = sample_files(root, sample_id)
        depth_bytes, rgb_bytes = files.lidar.read_bytes(), files.rgb.read_bytes()
        digest.update(depth_bytes)
        digest.update(rgb_bytes)
        azimuth, zenith = angles[files.folder]
        depth = read_depth(files.lidar, azimuth, zenith, source=io.BytesIO(depth_bytes))
        read_rgba(files.rgb, depth.shape, source=io.BytesIO(rgb_bytes))
    except DatasetError as error:
        return SampleCheck(digest.hexdigest(), str(error), npy_shape(depth_bytes))
    except OSError as error:  # its own text is "[Errno 13] Permission denied: '...'"
        return SampleCheck(digest.hexdigest(), f"cannot read {error.filename}: {error.strerror}", npy_shape(depth_bytes))
    return SampleCheck(digest.hexdigest(), "", depth.shape)


def npy_shape(data: bytes) -> tuple | None:
    """The array shape a .npy file's header records (numpy.lib.format), without decoding it."""
    stream = io.BytesIO(data)
    try:
        major, _ = np.lib.format.read_magic(stream)
        header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        return tuple(header(stream)[0])
    except ValueError:
        return None


def angle_table_problems(root: str, folder: str, shapes: Counter, angles: dict) -> list[str]:
    """One line per angle table of `folder` whose length fits none of its checked depth maps
    (`shapes`: how many maps have each shape), measured against the maps' most common shape; the
    maps are then not at fault. Empty when some map has the tables' shape."""
    azimuth, zenith = angles[folder]
    if not shapes or (len(azimuth), len(zenith)) in shapes:
        return []
    shape, count = shapes.most_common(1)[0]
    if len(shape) != 2:
        return []
    maps = "every checked depth map in {} has" if count == shapes.total() else \
        f"{count} of the {shapes.total()} checked depth maps in {{}} have"
    base = Path(root) / folder
    return [f"{base / name} has {len(table)} angles, but {maps.format(base / 'lidar')} {size} {axis} (shape {shape}); "
            f"fix {name} (one angle per depth map {axis[:-1]})"
            for name, table, size, axis in (("azimuth.npy", azimuth, shape[0], "rows"),
                                            ("zenith.npy", zenith, shape[1], "columns")) if len(table) != size]


def check_dataset(root: str | Path, sample_ids: list[str], workers: int | None = None,
                  progress: bool = True) -> CheckResult:
    """Checks every sample of `sample_ids` on `workers` threads (default: one per CPU core; PNG
    inflate and hashing release the GIL); never raises for a broken sample (see
    CheckResult.raise_if_broken), only for unreadable angle tables, which every sample needs."""
    root = str(Path(root).expanduser())
    workers = workers or os.cpu_count() or 2
    angles = class_angles(root)
    tables = hashlib.blake2b(digest_size=16)
    for folder in sorted(angles):
        for table in angles[folder]:
            tables.update(table.tobytes())
    with ThreadPoolExecutor(max(workers, 1)) as pool:
        results = list(tqdm(pool.map(lambda i: check_sample(root, i, angles), sample_ids), total=len(sample_ids),
                            desc="checking data", unit="sample", disable=not progress, leave=False))
    total = hashlib.blake2b(tables.digest(), digest_size=16)
    for sample_id, result in sorted(zip(sample_ids, results), key=lambda pair: pair[0]):
        total.update(result.digest.encode())
    return CheckResult(len(sample_ids), _problems(root, sample_ids, results, angles), total.hexdigest())


def _problems(root: str, sample_ids: list[str], results: list[SampleCheck], angles: dict) -> list[str]:
    """The samples' problems, with a wrong angle table named once in place of the problems of its
    folder's depth maps that only disagree with it."""
    if not any(r.problem for r in results):
        return []
    folders = [sample_files(root, sample_id).folder for sample_id in sample_ids]
    problems, blamed = [], {}  # blamed: folder -> the depth-map shape its tables do not fit
    for folder in sorted(angles):
        shapes = Counter(r.depth_shape for f, r in zip(folders, results) if f == folder and r.depth_shape is not None)
        tables = angle_table_problems(root, folder, shapes, angles)
        if tables:
            problems += tables
            blamed[folder] = shapes.most_common(1)[0][0]
    return problems + [r.problem for f, r in zip(folders, results)
                       if r.problem and not (f in blamed and r.depth_shape == blamed[f])]

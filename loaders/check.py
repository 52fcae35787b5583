"""The data check run once before the first variant: every sample opened, every problem named.

Without it a broken file fails each variant in turn (torch, resident) or crashes deep inside a
pipeline without a file name (DALI). Here each sample's image and depth map are read exactly as
the loaders read them (loaders.dataset: decodable, depth shape against the angle tables, finite
depth), on a thread pool with a progress bar, and the first problems are listed with their files.

Reading every byte anyway, the check also hashes the files: `fingerprint` identifies the
dataset's content (not its path or timestamps), so a run directory can tell whether a resumed
run reads the same data.
"""

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from loaders.dataset import DatasetError, class_angles, read_depth, read_rgba, sample_files

SHOWN_PROBLEMS = 10


@dataclass(frozen=True)
class CheckResult:
    samples: int
    problems: list[str]  # one line per broken sample, naming its file
    fingerprint: str  # content hash of the checked files and angle tables

    def raise_if_broken(self, shown: int = SHOWN_PROBLEMS) -> None:
        """A DatasetError listing the first `shown` problems, when there are any."""
        if self.problems:
            lines = "\n".join(f"  {line}" for line in self.problems[:shown])
            more = f"\n  ... and {len(self.problems) - shown} more" if len(self.problems) > shown else ""
            raise DatasetError(f"{len(self.problems)} of {self.samples} samples are broken:\n{lines}{more}")


def check_sample(root: str, sample_id: str, angles: dict) -> tuple[str, str]:
    """(content digest, problem or "") of one sample, read as the loaders read it, against its
    folder's tables in `angles` (class_angles)."""
    digest = hashlib.blake2b(sample_id.encode(), digest_size=16)
    try:
        files = sample_files(root, sample_id)
        depth_bytes, rgb_bytes = files.lidar.read_bytes(), files.rgb.read_bytes()
        digest.update(depth_bytes)
        digest.update(rgb_bytes)
        azimuth, zenith = angles[files.folder]
        depth = read_depth(files.lidar, azimuth, zenith, source=io.BytesIO(depth_bytes))
        read_rgba(files.rgb, depth.shape, source=io.BytesIO(rgb_bytes))
    except (DatasetError, OSError) as error:
        return digest.hexdigest(), str(error)
    return digest.hexdigest(), ""


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
    for sample_id, (digest, _) in sorted(zip(sample_ids, results)):
        total.update(digest.encode())
    return CheckResult(len(sample_ids), [problem for _, problem in results if problem], total.hexdigest())

"""A loader that decodes the split once and keeps it on the device as compact tensors.

Per step it only indexes: one gather of uint8 RGBA and float depth, then the [0, 1] scaling and
XYZA computed on the device for the whole batch. Nothing per sample runs on the host.
"""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from loaders.dataset import angle_tables, depth_to_xyza, read_sample, rgba_to_float
from loaders.order import epoch_order


def decode_split(root: str | Path, sample_ids: list[str], workers: int = 4, progress: bool = False) -> dict:
    """uint8 RGBA [N, H, W, 4], float depth [N, H, W], labels [N] and per-class angle tables."""
    root = str(Path(root).expanduser())
    with ThreadPoolExecutor(max(workers, 1)) as pool:
        samples = list(tqdm(pool.map(lambda i: read_sample(root, i), sample_ids), total=len(sample_ids),
                            desc="decode", unit="sample", disable=not progress, leave=False))
    azimuth, zenith = angle_tables(root)
    return {
        "rgba": torch.from_numpy(np.stack([s[0] for s in samples])),
        "depth": torch.from_numpy(np.stack([s[1] for s in samples])),
        "label": torch.tensor([s[2] for s in samples], dtype=torch.int64),
        "azimuth": torch.from_numpy(azimuth),
        "zenith": torch.from_numpy(zenith),
    }


class ResidentLoader:
    """Batches by indexing device-resident tensors; a seeded permutation per epoch."""

    form = "resident"

    def __init__(self, root, sample_ids, batch_size=32, shuffle=True, drop_last=True, seed=42,
                 device="cpu", workers=4, tensors: dict | None = None):
        self.device = torch.device(device)
        tensors = tensors if tensors is not None else decode_split(root, sample_ids, workers)
        self.tensors = {k: v.to(self.device) for k, v in tensors.items()}
        self.batch_size, self.shuffle, self.drop_last, self.seed = batch_size, shuffle, drop_last, seed
        self.num_samples = len(sample_ids)
        self.epoch = 0

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def order(self, epoch: int) -> torch.Tensor:
        """The sample order of an epoch, shared with the other loaders (loaders.order)."""
        return torch.from_numpy(epoch_order(self.num_samples, self.seed, epoch, self.shuffle)).to(self.device)

    def batch(self, index: torch.Tensor):
        """One gather per tensor (index_select: on CPU ~10x faster than t[index] for uint8)."""
        t = self.tensors
        label = t["label"].index_select(0, index)
        rgb = rgba_to_float(t["rgba"].index_select(0, index))
        lidar = depth_to_xyza(t["depth"].index_select(0, index), t["azimuth"][label], t["zenith"][label])
        return rgb, lidar, label

    def __iter__(self):
        order = self.order(self.epoch)
        self.epoch += 1
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield self.batch(order[start:start + self.batch_size])

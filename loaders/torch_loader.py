"""The seed study's pipeline: a torch Dataset decoding PNGs with PIL, fed by a DataLoader.

This is the baseline every other loader is compared with, so it stays as the seed wrote it:
Resize(64) + ToTensor, XYZA per sample on the host, 2 seeded workers, drop_last.
"""

import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from loaders.dataset import DatasetError, depth_to_xyza, load_angles, open_rgba, read_depth, sample_files
from loaders.order import EpochSampler


class FusionDataset(Dataset):
    """(rgb [4, H, W] in [0, 1], lidar XYZA [4, H, W], label) for a list of sample ids."""

    def __init__(self, root: str | Path, sample_ids: list[str], size: int = 64):
        self.root = str(Path(root).expanduser())
        self.sample_ids = list(sample_ids)
        self.transform = transforms.Compose([transforms.Resize(size), transforms.ToTensor()])

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getitem__(self, index: int):
        files = sample_files(self.root, self.sample_ids[index])
        azimuth, zenith = load_angles(self.root, files.folder)
        rgb = self.transform(open_rgba(files.rgb))
        depth = torch.from_numpy(read_depth(files.lidar, azimuth, zenith))
        if rgb.shape[1:] != depth.shape:
            raise DatasetError(f"{files.rgb} resizes to {tuple(rgb.shape[1:])} but {files.lidar} is {tuple(depth.shape)}")
        lidar = depth_to_xyza(depth, torch.from_numpy(azimuth), torch.from_numpy(zenith))
        return rgb, lidar, torch.tensor(files.label, dtype=torch.int64)


def seed_worker(worker_id: int) -> None:
    """The seed's worker_init_fn: every worker's numpy/random streams follow torch's seed."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


class TorchLoader:
    """Seed-style DataLoader; batches are moved to the target device as the seed's loop did.

    The order comes from EpochSampler (a seeded permutation per epoch, shared with the other
    loaders); the seeded generator still seeds the workers as in the seed.
    """

    form = "png"

    def __init__(self, root, sample_ids, batch_size=32, shuffle=True, drop_last=True, seed=42,
                 device="cpu", workers=2):
        self.device = torch.device(device)
        generator = torch.Generator()
        generator.manual_seed(seed)
        self.loader = DataLoader(
            FusionDataset(root, sample_ids),
            batch_size=batch_size,
            sampler=EpochSampler(len(sample_ids), seed, shuffle),
            drop_last=drop_last,
            num_workers=workers,
            worker_init_fn=seed_worker,
            generator=generator,
            pin_memory=self.device.type == "cuda",
        )
        self.num_samples = len(sample_ids)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        non_blocking = self.device.type == "cuda"
        for rgb, lidar, label in self.loader:
            yield (rgb.to(self.device, non_blocking=non_blocking),
                   lidar.to(self.device, non_blocking=non_blocking),
                   label.to(self.device, non_blocking=non_blocking))

"""The seed study's pipeline: a torch Dataset decoding PNGs with PIL, fed by a DataLoader.

This is the baseline every other loader is compared with, so it stays as the seed wrote it:
Resize + ToTensor, XYZA per sample on the host, 2 seeded workers, drop_last. Resize goes to the
depth map's (H, W) (the seed's Resize(64) for its 64x64 maps), so an image of any size fits.
"""

import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from loaders.dataset import DatasetError, class_angles, depth_to_xyza, open_rgba, read_depth, sample_files
from loaders.order import EpochSampler, ShardSampler


class FusionDataset(Dataset):
    """(rgb [4, H, W] in [0, 1], lidar XYZA [4, H, W], label) for a list of sample ids."""

    def __init__(self, root: str | Path, sample_ids: list[str]):
        self.root = str(Path(root).expanduser())
        self.sample_ids = list(sample_ids)
        self.angles = class_angles(self.root)  # read once here, not once per sample
        self.to_tensor = transforms.ToTensor()

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getitem__(self, index: int):
        files = sample_files(self.root, self.sample_ids[index])
        azimuth, zenith = self.angles[files.folder]
        depth = torch.from_numpy(read_depth(files.lidar, azimuth, zenith))
        rgb = self.to_tensor(transforms.Resize(tuple(depth.shape))(open_rgba(files.rgb)))
        lidar = depth_to_xyza(depth, torch.from_numpy(azimuth), torch.from_numpy(zenith))
        return rgb, lidar, torch.tensor(files.label, dtype=torch.int64)


def seed_worker(worker_id: int) -> None:
    """The seed's worker_init_fn: every worker's numpy/random streams follow torch's seed."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def worker_errors_unwrapped(loader):
    """Iterates `loader`; a DatasetError re-raised from a worker ("Caught DatasetError in DataLoader
    worker process 1. Original Traceback ...") is raised again with only the cause's message,
    which names the file, so a saved error keeps what matters instead of a traceback's head."""
    try:
        yield from loader
    except DatasetError as error:
        text = str(error)
        if not text.startswith("Caught "):
            raise
        cause = text.rstrip().splitlines()[-1]
        raise DatasetError(cause.partition("DatasetError: ")[2] or cause) from None


class TorchLoader:
    """Seed-style DataLoader; batches are moved to the target device as the seed's loop did.

    The order comes from EpochSampler (a seeded permutation per epoch, shared with the other
    loaders); the seeded generator still seeds the workers as in the seed.
    """

    form = "png"

    def __init__(self, root, sample_ids, batch_size=32, shuffle=True, drop_last=True, seed=42,
                 device="cpu", workers=2, rank=0, world=1):
        self.device = torch.device(device)
        generator = torch.Generator()
        generator.manual_seed(seed)
        self.loader = DataLoader(
            FusionDataset(root, sample_ids),
            batch_size=batch_size,
            sampler=ShardSampler(len(sample_ids), seed, rank, world, shuffle, even=shuffle) if world > 1
            else EpochSampler(len(sample_ids), seed, shuffle),
            drop_last=drop_last,
            num_workers=workers,
            worker_init_fn=seed_worker,
            generator=generator,
            pin_memory=self.device.type == "cuda",
        )
        self.num_samples = len(self.loader.sampler)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        non_blocking = self.device.type == "cuda"
        for rgb, lidar, label in worker_errors_unwrapped(self.loader):
            yield (rgb.to(self.device, non_blocking=non_blocking),
                   lidar.to(self.device, non_blocking=non_blocking),
                   label.to(self.device, non_blocking=non_blocking))

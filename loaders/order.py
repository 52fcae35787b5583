"""One shuffling rule for the loaders, so the same seed feeds each of them the same batches.

Epoch e of a split of n samples is numpy's default_rng([seed, e]).permutation(n). The seed-style
DataLoader (through EpochSampler), the resident loader and DALI's prepared form all use it, so
a speed difference between them is never a difference in what the network saw. (DALI's PNG
readers shuffle inside DALI with their own seeded rule.)

Under torchrun every rank walks the same epoch order and reads its own contiguous slice of it
(shard_order), the slice DALI's readers take for shard_id/num_shards.
"""

import numpy as np
from torch.utils.data import Sampler


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """Sample positions of one epoch: a seeded permutation, or 0..n-1 without shuffling."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch]).permutation(n)


class EpochSampler(Sampler):
    """A DataLoader sampler that starts the next epoch's permutation at every iter()."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch = 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        order = epoch_order(self.n, self.seed, self.epoch, self.shuffle)
        self.epoch += 1
        return iter(order.tolist())


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """The contiguous slice [start, stop) of an n-sample order that a rank reads, as DALI's readers
    split it."""
    return rank * n // world, (rank + 1) * n // world


def shard_order(order: np.ndarray, rank: int, world: int, even: bool = True) -> np.ndarray:
    """This rank's part of an epoch order shared by all ranks. even=True (training) first drops
    the order's last n % world positions, as DistributedSampler(drop_last=True) does, so every
    rank gets n // world samples and runs the same number of steps (a rank with one step more
    would wait forever in DDP's all-reduce). even=False (evaluation) keeps every sample once."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    if even:
        order = order[:len(order) // world * world]
    start, stop = shard_bounds(len(order), rank, world)
    return order[start:stop]


class ShardSampler(Sampler):
    """EpochSampler for one rank: the shared epoch permutation, this rank's slice."""

    def __init__(self, n: int, seed: int, rank: int, world: int, shuffle: bool = True, even: bool = True):
        self.n, self.seed, self.rank, self.world, self.shuffle, self.even = n, seed, rank, world, shuffle, even
        self.epoch = 0

    def order(self, epoch: int) -> np.ndarray:
        return shard_order(epoch_order(self.n, self.seed, epoch, self.shuffle), self.rank, self.world, self.even)

    def __len__(self) -> int:
        return len(self.order(0))

    def __iter__(self):
        order = self.order(self.epoch)
        self.epoch += 1
        return iter(order.tolist())

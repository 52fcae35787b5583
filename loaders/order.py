"""One shuffling rule for the loaders, so the same seed feeds each of them the same batches.

Epoch e of a split of n samples is numpy's default_rng([seed, e]).permutation(n). The seed-style
DataLoader (through EpochSampler), the resident loader and DALI's prepared form all use it, so
a speed difference between them is never a difference in what the network saw. (DALI's PNG
readers shuffle inside DALI with their own seeded rule.)
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

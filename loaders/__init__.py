"""Dataset reading, splits and the three loaders behind one interface.

A loader is an iterable of (rgb [B, 4, H, W] float in [0, 1], lidar XYZA [B, 4, H, W] float,
label [B] int64) batches on the target device; each iteration is one epoch; len() is the number
of batches per epoch; `form` says what it reads (png, resident, prepared). With world > 1 a
loader yields rank `rank`'s shard of each epoch (loaders.order.shard_order): a shuffled
(training) order evened so every rank runs the same steps, an unshuffled one kept whole.
"""

LOADERS = ("torch", "resident", "dali")


def make_loader(kind: str, root, sample_ids, *, batch_size=32, shuffle=True, drop_last=True, seed=42,
                device="cpu", workers=2, rank=0, world=1, **options):
    """One loader of `kind`; DALI is imported only when asked for, since it is optional."""
    if kind == "torch":
        from loaders.torch_loader import TorchLoader
        return TorchLoader(root, sample_ids, batch_size, shuffle, drop_last, seed, device, workers, rank, world)
    if kind == "resident":
        from loaders.resident import ResidentLoader
        return ResidentLoader(root, sample_ids, batch_size, shuffle, drop_last, seed, device, rank=rank, world=world,
                              **options)
    if kind == "dali":
        from loaders.dali_loader import DaliLoader
        return DaliLoader(root, sample_ids, batch_size, shuffle, drop_last, seed, device, workers, shard_id=rank,
                          num_shards=world, **options)
    raise ValueError(f"--loader must be one of {', '.join(LOADERS)}, got {kind!r}")

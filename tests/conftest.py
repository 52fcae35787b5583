"""Shared fixtures and helpers: a tiny generated dataset (session-scoped, rendered once), its split,
a unit-test RunConfig, hand-written datasets for broken-data tests, and `python -m bench` in a
subprocess."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Without a GPU, Triton kernels run through Triton's interpreter. It is chosen when a kernel is
# decorated, so it must be set before any test module imports kernels/.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from bench.config import RunConfig
from bench.instruments import checks, memory
from loaders.dataset import CLASSES, discover_ids
from loaders.generate import generate_dataset
from loaders.split import make_split

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def host_peak_resets() -> bool:
    """Whether this kernel lets a process reset its peak RSS: the peak is put 96 MiB over the RSS
    (pages mapped, filled and unmapped), then reset and read back."""
    block = checks.allocate(96 * 2**20, torch.device("cpu"))
    del block
    return memory.reset_host_peak()


REPO = Path(__file__).resolve().parents[1]


def bench(*args, cwd=None):
    """`python -m bench` of this checkout, also from another working directory."""
    return subprocess.run([sys.executable, "-m", "bench", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})


def write_sample(root: Path, folder: str, index: int, rng: np.random.Generator, size: int = 64) -> None:
    """One random RGBA PNG and depth map; noise makes every sample's fingerprint unique."""
    rgba = rng.integers(0, 256, (size, size, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(root / folder / "rgb" / f"{index:04d}.png")
    np.save(root / folder / "lidar" / f"{index:04d}.npy", rng.uniform(1, 60, (size, size)).astype(np.float32))


def write_dataset(root: Path, per_class: int = 6, size: int = 64, seed: int = 0) -> Path:
    """A tiny valid dataset; each class gets its own angle tables so a wrong table shows up in XYZA."""
    rng = np.random.default_rng(seed)
    for folder in CLASSES:
        for sub in ("rgb", "lidar"):
            (root / folder / sub).mkdir(parents=True, exist_ok=True)
        np.save(root / folder / "azimuth.npy", rng.uniform(-0.5, 0.5, size).astype(np.float32))
        np.save(root / folder / "zenith.npy", rng.uniform(-0.5, 0.5, size).astype(np.float32))
        for index in range(per_class):
            write_sample(root, folder, index, rng, size)
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """48 rendered samples per class: enough for two batches of 32 in each split."""
    return generate_dataset(tmp_path_factory.mktemp("data") / "synthetic", per_class=48, seed=7, progress=False)


@pytest.fixture(scope="session")
def split(tiny_data):
    """The tiny dataset's seeded split (76 train, 20 val)."""
    return make_split(discover_ids(tiny_data), seed=42)


def tiny_config(tiny_data, split, **overrides) -> RunConfig:
    """A RunConfig small enough for a unit test on CPU: 16 train and 16 val samples, one epoch."""
    settings = dict(data_root=str(tiny_data), train_ids=split["train"][:16], val_ids=split["val"][:16],
                    device=torch.device("cpu"), epochs=1, warmup_steps=1, infer_iters=2, workers=0, progress=False,
                    reference_steps=1)
    return RunConfig(**{**settings, **overrides})

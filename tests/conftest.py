"""Shared fixtures: a tiny generated dataset (session-scoped, rendered once) and its split."""

import os

import pytest
import torch

# Without a GPU, Triton kernels run through Triton's interpreter. It is chosen when a kernel is
# decorated, so it must be set before any test module imports kernels/.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from bench.config import RunConfig
from loaders.dataset import discover_ids
from loaders.generate import generate_dataset
from loaders.split import make_split

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


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
                    reference_steps=2)
    return RunConfig(**{**settings, **overrides})

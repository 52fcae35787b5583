"""Shared fixtures: a tiny generated dataset (session-scoped, rendered once) and its split."""

import os

import pytest
import torch

# Without a GPU, Triton kernels run through Triton's interpreter. It is chosen when a kernel is
# decorated, so it must be set before any test module imports kernels/.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from loaders.generate import generate_dataset

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """48 rendered samples per class: enough for two batches of 32 in each split."""
    return generate_dataset(tmp_path_factory.mktemp("data") / "synthetic", per_class=48, seed=7, progress=False)

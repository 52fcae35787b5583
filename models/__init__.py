"""Fusion networks: tensors in, logits out; no knowledge of loaders or reports."""

from models.fusion import (
    ARCHITECTURES,
    CHANNEL_LAYOUTS,
    DOWNSAMPLES,
    Embedder,
    IntermediateFusionNet,
    LateFusionNet,
    build_model,
    count_parameters,
    count_stored_parameters,
    fuse_relu_maxpool,
)

__all__ = [
    "ARCHITECTURES",
    "CHANNEL_LAYOUTS",
    "DOWNSAMPLES",
    "Embedder",
    "IntermediateFusionNet",
    "LateFusionNet",
    "build_model",
    "count_parameters",
    "count_stored_parameters",
    "fuse_relu_maxpool",
]

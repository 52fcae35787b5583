"""Fusion networks: tensors in, logits out; no knowledge of loaders or reports."""

from models.fusion import (
    ARCHITECTURES,
    DOWNSAMPLES,
    Embedder,
    IntermediateFusionNet,
    LateFusionNet,
    build_model,
    count_parameters,
)

__all__ = [
    "ARCHITECTURES",
    "DOWNSAMPLES",
    "Embedder",
    "IntermediateFusionNet",
    "LateFusionNet",
    "build_model",
    "count_parameters",
]

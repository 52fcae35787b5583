"""The seed study's fusion networks, written so their parameter counts match the seed table.

Both modalities are 4-channel 64x64 images (RGBA and LiDAR XYZA). The embedder maps each to a
[B, 200, 8, 8] feature map; the networks differ only in where and how the two are combined.
"""

import torch
from torch import nn

ARCHITECTURES = ("late", "concat", "add", "mul")
DOWNSAMPLES = ("maxpool", "strided")
CHANNELS = (50, 100, 200)


def _downsample(channels: int, mode: str) -> list[nn.Module]:
    if mode == "maxpool":
        return [nn.MaxPool2d(2)]
    if mode == "strided":
        return [nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1), nn.ReLU()]
    raise ValueError(f"downsample must be one of {DOWNSAMPLES}, got {mode!r}")


class Embedder(nn.Module):
    """Three conv blocks, 4 -> 50 -> 100 -> 200 channels, each halving the resolution."""

    def __init__(self, in_channels: int = 4, downsample: str = "maxpool"):
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for channels in CHANNELS:
            layers += [nn.Conv2d(previous, channels, kernel_size=3, padding=1), nn.ReLU()]
            layers += _downsample(channels, downsample)
            previous = channels
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _head(in_features: int, out_features: int = 2) -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, 512),
        nn.ReLU(),
        nn.Linear(512, 128),
        nn.ReLU(),
        nn.Linear(128, out_features),
    )


class LateFusionNet(nn.Module):
    """Each modality is classified on its own into a 2-d embedding; a small MLP fuses the two."""

    def __init__(self, downsample: str = "maxpool", emb_dim_late: int = 2, size: int = 64):
        super().__init__()
        flat = CHANNELS[-1] * (size // 8) ** 2
        self.rgb = nn.Sequential(Embedder(4, downsample), _head(flat, emb_dim_late))
        self.lidar = nn.Sequential(Embedder(4, downsample), _head(flat, emb_dim_late))
        self.classifier = nn.Sequential(nn.Linear(2 * emb_dim_late, 20), nn.ReLU(), nn.Linear(20, 2))

    def forward(self, rgb: torch.Tensor, lidar: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.cat([self.rgb(rgb), self.lidar(lidar)], dim=1))


class IntermediateFusionNet(nn.Module):
    """The two feature maps are fused (concat on channels, add or mul) before one shared head."""

    def __init__(self, mode: str = "concat", downsample: str = "maxpool", size: int = 64):
        super().__init__()
        if mode not in ("concat", "add", "mul"):
            raise ValueError(f"fusion mode must be concat, add or mul, got {mode!r}")
        self.mode = mode
        self.rgb = Embedder(4, downsample)
        self.lidar = Embedder(4, downsample)
        fused_channels = 2 * CHANNELS[-1] if mode == "concat" else CHANNELS[-1]
        self.head = _head(fused_channels * (size // 8) ** 2)

    def forward(self, rgb: torch.Tensor, lidar: torch.Tensor) -> torch.Tensor:
        a, b = self.rgb(rgb), self.lidar(lidar)
        if self.mode == "concat":
            fused = torch.cat([a, b], dim=1)
        elif self.mode == "add":
            fused = a + b
        else:
            fused = a * b
        return self.head(fused)


def build_model(arch: str, downsample: str = "maxpool") -> nn.Module:
    """The network for an architecture name of ARCHITECTURES."""
    if arch == "late":
        return LateFusionNet(downsample)
    if arch in ("concat", "add", "mul"):
        return IntermediateFusionNet(arch, downsample)
    raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {arch!r}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

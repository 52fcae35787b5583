"""The seed study's fusion networks, written so their parameter counts match the seed table.

Both modalities are 4-channel 64x64 images (RGBA and LiDAR XYZA). The embedder maps each to a
[B, 200, 8, 8] feature map; the networks differ only in where and how the two are combined.
"""

import torch
from torch import nn

ARCHITECTURES = ("late", "concat", "add", "mul")
DOWNSAMPLES = ("maxpool", "strided")
CHANNEL_LAYOUTS = ("seed", "aligned")
CHANNELS = (50, 100, 200)
ALIGNMENT = 8  # tensor-core tiles; cuDNN pads other widths itself on every call (nhwcAddPaddingKernel)


def _downsample(channels: int, mode: str) -> list[nn.Module]:
    if mode == "maxpool":
        return [nn.MaxPool2d(2)]
    if mode == "strided":
        return [nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1), nn.ReLU()]
    raise ValueError(f"downsample must be one of {DOWNSAMPLES}, got {mode!r}")


def aligned_width(channels: int) -> int:
    return -(-channels // ALIGNMENT) * ALIGNMENT


def _padded_conv(conv: nn.Conv2d, in_channels: int, out_channels: int) -> nn.Conv2d:
    """`conv` widened with zero weights and bias; its own weights sit in the leading slice. The
    extra output channels are 0 before ReLU, so they stay 0 and get zero gradients; the extra
    input channels (the previous layer's padding) meet zero weights. skip_init draws no random
    numbers, so the layers built after this one get the seed network's initial weights."""
    padded = torch.nn.utils.skip_init(nn.Conv2d, in_channels, out_channels, conv.kernel_size,
                                      stride=conv.stride, padding=conv.padding)
    with torch.no_grad():
        padded.weight.zero_()
        padded.bias.zero_()
        padded.weight[: conv.out_channels, : conv.in_channels] = conv.weight
        padded.bias[: conv.out_channels] = conv.bias
    padded.logical_numel = conv.weight.numel() + conv.bias.numel()
    return padded


def _align(layers: list[nn.Module], in_channels: int) -> list[nn.Module]:
    """Every conv widened to multiples of ALIGNMENT, except the input width (the data's) and the
    last output width (the head's input; 200 is already aligned)."""
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    aligned, previous = [], in_channels
    for layer in layers:
        if isinstance(layer, nn.Conv2d):
            out = layer.out_channels if layer is convs[-1] else aligned_width(layer.out_channels)
            if (previous, out) != (layer.in_channels, layer.out_channels):
                layer = _padded_conv(layer, previous, out)
            previous = out
        aligned.append(layer)
    return aligned


class Embedder(nn.Module):
    """Three conv blocks, 4 -> 50 -> 100 -> 200 channels, each halving the resolution.

    channels="aligned" stores the widths 50 and 100 as 56 and 104 with zeroed extra channels: the
    same function and the same training under Adam, but cuDNN need not pad on every call."""

    def __init__(self, in_channels: int = 4, downsample: str = "maxpool", channels: str = "seed"):
        super().__init__()
        if channels not in CHANNEL_LAYOUTS:
            raise ValueError(f"channels must be one of {CHANNEL_LAYOUTS}, got {channels!r}")
        layers: list[nn.Module] = []
        previous = in_channels
        for width in CHANNELS:
            layers += [nn.Conv2d(previous, width, kernel_size=3, padding=1), nn.ReLU()]
            layers += _downsample(width, downsample)
            previous = width
        self.features = nn.Sequential(*(_align(layers, in_channels) if channels == "aligned" else layers))

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

    def __init__(self, downsample: str = "maxpool", emb_dim_late: int = 2, size: int = 64, channels: str = "seed"):
        super().__init__()
        flat = CHANNELS[-1] * (size // 8) ** 2
        self.rgb = nn.Sequential(Embedder(4, downsample, channels), _head(flat, emb_dim_late))
        self.lidar = nn.Sequential(Embedder(4, downsample, channels), _head(flat, emb_dim_late))
        self.classifier = nn.Sequential(nn.Linear(2 * emb_dim_late, 20), nn.ReLU(), nn.Linear(20, 2))

    def forward(self, rgb: torch.Tensor, lidar: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.cat([self.rgb(rgb), self.lidar(lidar)], dim=1))


class IntermediateFusionNet(nn.Module):
    """The two feature maps are fused (concat on channels, add or mul) before one shared head."""

    def __init__(self, mode: str = "concat", downsample: str = "maxpool", size: int = 64, channels: str = "seed"):
        super().__init__()
        if mode not in ("concat", "add", "mul"):
            raise ValueError(f"fusion mode must be concat, add or mul, got {mode!r}")
        self.mode = mode
        self.rgb = Embedder(4, downsample, channels)
        self.lidar = Embedder(4, downsample, channels)
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


def build_model(arch: str, downsample: str = "maxpool", channels: str = "seed") -> nn.Module:
    """The network for an architecture name of ARCHITECTURES. Under one torch.manual_seed, the
    "aligned" network starts from the "seed" network's weights (zero-padded)."""
    if arch == "late":
        return LateFusionNet(downsample, channels=channels)
    if arch in ("concat", "add", "mul"):
        return IntermediateFusionNet(arch, downsample, channels=channels)
    raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {arch!r}")


def fuse_relu_maxpool(model: nn.Module) -> nn.Module:
    """Each ReLU + MaxPool2d(2) pair replaced in place by the fused Triton op of kernels/ (same
    values and gradients; no parameters change). For CUDA devices where `bench kernels` found it
    faster (kernels.select.use_kernel); on a CPU it runs only under TRITON_INTERPRET=1."""
    from kernels.relu_maxpool import ReLUMaxPool2d
    for sequential in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        layers = list(sequential)
        for i in range(len(layers) - 1):
            if isinstance(layers[i], nn.ReLU) and isinstance(layers[i + 1], nn.MaxPool2d) and layers[i + 1].kernel_size == 2:
                layers[i], layers[i + 1] = ReLUMaxPool2d(), nn.Identity()  # indices, so state_dict keys, stay
        for i, layer in enumerate(layers):
            sequential[i] = layer
    return model


def count_parameters(model: nn.Module) -> int:
    """The logical count: the seed network's, also for an aligned network (padding not counted)."""
    return sum(getattr(m, "logical_numel", None) or sum(p.numel() for p in m.parameters(recurse=False))
               for m in model.modules())


def count_stored_parameters(model: nn.Module) -> int:
    """Every stored element, zero padding included."""
    return sum(p.numel() for p in model.parameters())

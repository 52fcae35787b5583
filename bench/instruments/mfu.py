"""Model FLOPs per sample and model FLOP utilisation (MFU) against the device's peak.

FLOPs are counted once per variant with torch.utils.flop_counter on the eager model
(matmuls and convolutions, the work that dominates these nets); MFU is then achieved
FLOP/s (FLOPs per sample x samples/s) over the dense peak of the GPU at that precision.
"""

import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

# Dense peak TFLOP/s from NVIDIA's datasheets and architecture whitepapers (the sparsity
# figures are 2x these). "fp32" is the non-tensor-core FP32 peak; "bf16"/"fp16" are
# tensor-core peaks with FP32 accumulation, which is what PyTorch uses. PyTorch runs fp32
# convolutions in TF32 by default (torch.backends.cudnn.allow_tf32), and convolutions are
# nearly all of these nets' FLOPs, so fp32 variants are then measured against "tf32": the
# dense TF32 tensor peak, which is half the BF16 one on every GPU listed here.
# Keys are matched as whole words in the device name, first match wins, so more specific
# names come before the names they contain ("H100 PCIe" before "H100").
PEAK_TFLOPS = {
    # H100 datasheet: PCIe 51 / 756; NVL 60 / 835; SXM 67 / 989.
    "H100 PCIe": {"fp32": 51.0, "bf16": 756.0, "fp16": 756.0},
    "H100 NVL": {"fp32": 60.0, "bf16": 835.0, "fp16": 835.0},
    "H100": {"fp32": 67.0, "bf16": 989.0, "fp16": 989.0},
    # H200 datasheet: NVL 60 / 835; SXM 67 / 989.
    "H200 NVL": {"fp32": 60.0, "bf16": 835.0, "fp16": 835.0},
    "H200": {"fp32": 67.0, "bf16": 989.0, "fp16": 989.0},
    # A100 datasheet (SXM and PCIe, 40 and 80 GB): 19.5 / 312.
    "A100": {"fp32": 19.5, "bf16": 312.0, "fp16": 312.0},
    # L40S datasheet: 91.6 / 362.
    "L40S": {"fp32": 91.6, "bf16": 362.0, "fp16": 362.0},
    # L4 datasheet: 30.3 / 121.
    "L4": {"fp32": 30.3, "bf16": 121.0, "fp16": 121.0},
    # A10 datasheet: 31.2 / 125.
    "A10": {"fp32": 31.2, "bf16": 125.0, "fp16": 125.0},
    # GA102 whitepaper, RTX 3090: 35.6 FP32; 71 FP16/BF16 tensor with FP32 accumulate.
    "RTX 3090": {"fp32": 35.6, "bf16": 71.0, "fp16": 71.0},
    # Ada whitepaper, RTX 4090: 82.6 FP32; 165.2 FP16/BF16 tensor with FP32 accumulate.
    "RTX 4090": {"fp32": 82.6, "bf16": 165.2, "fp16": 165.2},
}
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


def _count_flops(step) -> int:
    """Total FLOPs of everything `step` runs, counted by torch's dispatcher-level counter."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def forward_flops_per_sample(model: nn.Module, rgb: Tensor, lidar: Tensor) -> float:
    """FLOPs of one inference forward pass, per sample of the batch."""

    def forward():
        with torch.no_grad():
            model(rgb, lidar)

    return _count_flops(forward) / rgb.shape[0]


def train_flops_per_sample(model: nn.Module, rgb: Tensor, lidar: Tensor) -> float:
    """FLOPs of one training step's forward and backward (cross entropy), per sample.

    Gradients are computed with torch.autograd.grad, which returns them instead of
    accumulating into .grad, so the model's parameters and gradients are left as they were.
    The optimizer update is not counted (it is elementwise, not matmul work).
    """
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        logits = model(rgb, lidar)
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        loss = F.cross_entropy(logits, labels)
        if params:
            torch.autograd.grad(loss, params, allow_unused=True)

    return _count_flops(step) / rgb.shape[0]


def peak_flops(gpu_name: str, precision: str) -> float | None:
    """Dense peak FLOP/s of the named GPU at `precision`; None for unknown GPUs and CPUs."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    name = gpu_name.upper()
    for key, peaks in PEAK_TFLOPS.items():
        if re.search(rf"(?<![A-Z0-9]){re.escape(key.upper())}(?![A-Z0-9])", name):
            return (peaks["bf16"] / 2 if precision == "tf32" else peaks[precision]) * 1e12
    return None


def mfu(
    flops_per_sample: float, samples_per_s: float, gpu_name: str, precision: str
) -> float | None:
    """Achieved model FLOP/s as a fraction of the device's dense peak; None without a peak."""
    peak = peak_flops(gpu_name, precision)
    if peak is None:
        return None
    return flops_per_sample * samples_per_s / peak

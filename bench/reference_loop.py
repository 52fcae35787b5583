"""The minimal PyTorch training loop of a variant, written without the runner and without Trainer.

Its samples/s is what the variant's settings can reach on this machine when nothing but the
model trains: one fixed batch already on the device, Adam (fused on CUDA), autocast, the compile
mode and memory format of the variant. The runner's samples/s over this is the harness efficiency,
so the loop's bookkeeping, the loader and Trainer's own choices all count against the harness.
"""

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from bench.instruments.timing import rate, time_calls
from bench.variants import Variant
from models import build_model

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def reference_samples_per_s(variant: Variant, device: torch.device, steps: int, warmup: int = 5,
                            lr: float = 1e-4, seed: int = 42) -> float:
    """Training samples/s of the plain loop over `steps` steps after `warmup` (compilation) steps."""
    torch.manual_seed(seed)
    fmt = torch.channels_last if variant.memory_format == "channels_last" else torch.contiguous_format
    model = build_model(variant.arch, variant.downsample).to(device, memory_format=fmt)
    forward = torch.compile(model, mode=variant.compile_mode) if variant.compile_mode != "none" else model
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type) if variant.precision == "fp16" else None
    amp = torch.autocast(device.type, dtype=_DTYPES[variant.precision]) if variant.precision in _DTYPES else nullcontext()
    cudagraphs = variant.compile_mode in ("reduce-overhead", "max-autotune") and device.type == "cuda"
    b = variant.batch_size
    rgb = torch.rand(b, 4, 64, 64, device=device).contiguous(memory_format=fmt)
    lidar = torch.randn(b, 4, 64, 64, device=device).contiguous(memory_format=fmt)
    label = torch.randint(0, 2, (b,), device=device)

    def step():
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        with amp:
            logits = forward(rgb, lidar)
        loss = F.cross_entropy(logits.float(), label)
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    return rate(time_calls(step, steps, device, warmup=warmup), b)

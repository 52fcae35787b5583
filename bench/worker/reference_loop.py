"""The minimal PyTorch training loop of a variant, written without the runner and without Trainer.

Its samples/s is what the variant's settings can reach on this machine when nothing but the
model trains: one fixed batch already on the device, Adam (fused on CUDA), autocast, the compile
mode, memory format, channel widths and Triton kernels (--kernels) of the variant. The runner's
samples/s over this is the harness efficiency, so the loop's bookkeeping, the loader and
Trainer's own choices all count against the harness.

`--compile-mode step` is held to the plain whole-step capture loop: the model compiled in mode
default and the whole step (forward, backward, fused capturable Adam) recorded once as a CUDA
graph with PyTorch's recipe (warm up on a side stream, capture, replay), written here on its own
rather than with bench.worker.step_capture, so a cost of that module shows as harness overhead. Off CUDA
it is the compiled loop (mode default), as the Trainer falls back there.
"""

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from bench.instruments.timing import rate, time_calls
from bench.worker.trainer import AMP_DTYPES, fuse_kernels  # precision names, the row's kernels; not the Trainer
from bench.variants import Variant
from models import build_model


def reference_samples_per_s(variant: Variant, device: torch.device, steps: int, warmup: int = 5,
                            lr: float = 1e-4, seed: int = 42, kernels=None) -> float:
    """Training samples/s of the plain loop over `steps` steps after `warmup` (compilation) steps;
    `kernels` is the run's kernels.csv (--kernels): the network fuses the same Triton kernels as
    the variant's row, so a winning kernel does not show as harness efficiency above 1."""
    torch.manual_seed(seed)
    fmt = torch.channels_last if variant.memory_format == "channels_last" else torch.contiguous_format
    model = build_model(variant.arch, variant.downsample, channels=variant.channels).to(device, memory_format=fmt)
    fuse_kernels(model, variant, device, kernels)
    captured = variant.compile_mode == "step" and device.type == "cuda"
    mode = "default" if variant.compile_mode == "step" else variant.compile_mode
    forward = torch.compile(model, mode=mode) if variant.compile_mode != "none" else model
    optimizer = torch.optim.Adam(model.parameters(), lr=torch.tensor(lr, device=device) if captured else lr,
                                 fused=device.type == "cuda", capturable=captured)
    scaler = torch.amp.GradScaler(device.type) if variant.precision == "fp16" else None
    amp = (torch.autocast(device.type, dtype=AMP_DTYPES[variant.precision], cache_enabled=not captured)
           if variant.precision in AMP_DTYPES else nullcontext())
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

    return rate(time_calls(_graph(step, warmup) if captured else step, steps, device, warmup=warmup), b)


def _graph(step, warmup: int):
    """`step` recorded as one CUDA graph; returns its replay (the batch tensors are the static inputs)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # Adam's state and cuDNN's workspaces exist before capture
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # loader threads may touch CUDA meanwhile
        step()
    return graph.replay

"""The minimal PyTorch training loop of a variant, written without the runner and without Trainer.

Its samples/s is what the variant's settings can reach on this machine when nothing but the
model trains: one fixed batch already on the device, Adam (fused on CUDA), autocast, the compile
mode, memory format, channel widths and Triton kernels (--kernels) of the variant. The runner's
samples/s over this is the harness efficiency, so the loop's bookkeeping, the loader and
Trainer's own choices all count against the harness.

The loop runs in rounds until the 95 % interval of its mean rate is narrower than
PLAIN_RESOLUTION of the mean (or the round or time budget runs out), and `efficiency` gives the
ratio an interval from the spread of both sides, so a ratio the machine's noise cannot resolve
is never shown as fact. An efficiency above 1 is a measurement problem, not a harness that
beats plain PyTorch: the plain loop does less per step than the harness.

`--compile-mode step` is held to the plain whole-step capture loop: the model compiled in mode
default and the whole step (forward, backward, fused capturable Adam) recorded once as a CUDA
graph with PyTorch's recipe (warm up on a side stream, capture, replay), written here on its own
rather than with bench.worker.step_capture, so a cost of that module shows as harness overhead. Off CUDA
it is the compiled loop (mode default), as the Trainer falls back there.
"""

import math
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from bench.instruments.timing import rate, time_calls
from bench.worker.trainer import AMP_DTYPES, fuse_kernels  # precision names, the row's kernels; not the Trainer
from bench.variants import Variant
from models import build_model


PLAIN_RESOLUTION = 0.04  # the plain loop's 95 % interval: narrower than 4 % of its mean rate
EFFICIENCY_RESOLUTION = 0.05  # an efficiency interval narrower than this is resolved


def reference_samples_per_s(variant: Variant, device: torch.device, steps: int, warmup: int = 5, lr: float = 1e-4,
                            seed: int = 42, kernels=None, min_rounds: int = 3, max_rounds: int = 5,
                            budget_s: float = 5.0) -> list[float]:
    """Training samples/s of the plain loop in each round of `steps` steps, after `warmup`
    (compilation) steps: at least `min_rounds`, then until resolved (PLAIN_RESOLUTION) or
    `max_rounds` or `budget_s` seconds of rounds. `kernels` is the run's kernels.csv (--kernels):
    the network fuses the same Triton kernels as the variant's row, so a winning kernel does not
    show as harness efficiency above 1."""
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

    timed = _graph(step, warmup) if captured else step
    for _ in range(warmup):
        timed()
    rates, start = [], time.perf_counter()  # the budget counts rounds, not compilation
    while len(rates) < max_rounds:
        rates.append(rate(time_calls(timed, steps, device, warmup=0), b))
        if len(rates) >= min_rounds and (_relative_width(rates) < PLAIN_RESOLUTION
                                         or time.perf_counter() - start > budget_s):
            break
    return rates


def _relative_width(values: list[float]) -> float:
    """Width of the 95 % Student-t interval of the mean, over the mean."""
    sem = float(np.std(values, ddof=1)) / math.sqrt(len(values))
    return 2 * _t95(len(values) - 1) * sem / float(np.mean(values))


def _t95(df: float) -> float:
    return float(stats.t.ppf(0.975, df))


def efficiency(harness_sps: float, harness_windows: list[float], plain_rates: list[float]) -> dict:
    """Harness samples/s over the plain loop's mean, with a 95 % interval from the spread of the
    harness's steady windows (epochs, or repeats) and of the plain loop's rounds, combined on the
    log scale with Welch's degrees of freedom; no interval without two values on each side."""
    plain = float(np.mean(plain_rates)) if plain_rates else math.nan
    ratio = harness_sps / plain
    columns = {"reference_samples_per_s": plain, "reference_rounds": len(plain_rates), "harness_efficiency": ratio,
               "harness_efficiency_ci95_low": math.nan, "harness_efficiency_ci95_high": math.nan,
               "harness_efficiency_resolved": False}
    h, p = np.log(harness_windows), np.log(plain_rates)
    if len(h) < 2 or len(p) < 2 or not math.isfinite(ratio):
        return columns
    vh, vp = np.var(h, ddof=1) / len(h), np.var(p, ddof=1) / len(p)
    se = math.sqrt(vh + vp)
    df = (vh + vp) ** 2 / (vh ** 2 / (len(h) - 1) + vp ** 2 / (len(p) - 1)) if se > 0 else math.inf
    low, high = ratio * math.exp(-_t95(df) * se), ratio * math.exp(_t95(df) * se)
    return columns | {"harness_efficiency_ci95_low": low, "harness_efficiency_ci95_high": high,
                      "harness_efficiency_resolved": high - low < EFFICIENCY_RESOLUTION}


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

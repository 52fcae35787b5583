"""pytest-benchmark regression checks: the training step and the resident loader's batch.

The default run (addopts --benchmark-disable) executes each body once as a plain test. On a
benchmark runner: `pytest tests/test_benchmarks.py --benchmark-enable --benchmark-autosave`, then
later `--benchmark-compare --benchmark-compare-fail=mean:10%` fails on a >10 % slowdown.
"""

import pytest
import torch

from bench.config import RunConfig
from bench.runner import Trainer
from bench.variants import Variant
from conftest import requires_cuda
from loaders.dataset import discover_ids
from loaders.resident import ResidentLoader


def step_fn(variant: Variant, device: torch.device):
    """A callable running one synchronised training step on fixed random data."""
    torch._dynamo.reset()  # each case compiles its own static-shape graph, as `bench all` does
    cfg = RunConfig(data_root="", train_ids=[], val_ids=[], device=device, epochs=1)
    trainer = Trainer(variant, cfg)
    rgb = torch.rand(variant.batch_size, 4, 64, 64, device=device)
    lidar = torch.rand(variant.batch_size, 4, 64, 64, device=device)
    label = torch.randint(0, 2, (variant.batch_size,), device=device)

    def step():
        trainer.step(rgb, lidar, label)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step


def test_cpu_training_step(benchmark):
    step = step_fn(Variant("add", batch_size=8), torch.device("cpu"))
    benchmark.extra_info["samples_per_call"] = 8
    benchmark.pedantic(step, rounds=5, warmup_rounds=1)


def test_resident_batch(benchmark, tiny_data):
    loader = ResidentLoader(tiny_data, discover_ids(tiny_data), batch_size=32)
    index = loader.order(0)[:32]
    rgb, lidar, label = benchmark(loader.batch, index)
    assert rgb.shape == lidar.shape == (32, 4, 64, 64) and label.shape == (32,)


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("precision,compile_mode,batch_size", [
    ("fp32", "none", 32), ("bf16", "none", 32), ("bf16", "reduce-overhead", 32), ("bf16", "reduce-overhead", 512),
])
def test_gpu_training_step(benchmark, precision, compile_mode, batch_size):
    step = step_fn(Variant("add", precision=precision, compile_mode=compile_mode, batch_size=batch_size),
                   torch.device("cuda"))
    benchmark.extra_info["samples_per_call"] = batch_size
    benchmark.pedantic(step, rounds=50, warmup_rounds=10)

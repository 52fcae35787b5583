"""pytest-benchmark regression suite: a training and an inference step of each network, and one
batch of each loader, each with enough rounds (>= 10 after warm-up) for the gate to call a
slowdown real (one-sided Mann-Whitney at p < 0.002 needs 6 a side).

The default run (addopts --benchmark-disable) executes each body once: the CPU cases are a smoke
check that never fails on timing, and the GPU cases skip without CUDA. On the GPU runner:

    pytest tests/test_benchmarks.py --benchmark-enable --benchmark-json=bench.json
    python -m bench gate benchmarks/baselines bench.json

Every case records the hardware key (GPU model, driver, power limit) in extra_info, which picks
the baseline folder (benchmarks/baselines/<key>/baseline.json) and keeps other hardware's
baselines from ever being a pass/fail reference.
"""

import itertools

import pytest
import torch

from bench.config import RunConfig
from bench.instruments.env import collect_env, hardware_key
from bench.worker.runner import Trainer
from bench.variants import Variant
from conftest import requires_cuda
from loaders import make_loader
from loaders.dataset import discover_ids
from reports.gate import baseline_key

ARCHS = ("late", "concat", "add", "mul")
ROUNDS, WARMUP = 10, 2
GPU_VARIANTS = [(arch, precision, "none", 32) for arch in ARCHS for precision in ("fp32", "bf16")] + [
    ("add", "bf16", "reduce-overhead", 32), ("add", "bf16", "reduce-overhead", 512)]


def _power_limit_w(device: torch.device) -> float | None:
    """The enforced power limit of the GPU behind `device`, found by PCI bus id as the harness
    does: NVML's indices are not CUDA's under CUDA_VISIBLE_DEVICES."""
    if device.type != "cuda":
        return None
    try:
        import pynvml
        from bench.instruments.nvml import handle_for
        pynvml.nvmlInit()
    except Exception:  # NVML missing or refused: the key falls back to model and driver
        return None
    try:
        return pynvml.nvmlDeviceGetEnforcedPowerLimit(handle_for(device)) / 1000
    except Exception:
        return None
    finally:
        pynvml.nvmlShutdown()


def test_power_limit_is_read_from_the_gpu_at_the_devices_pci_bus_id(monkeypatch):
    """Under CUDA_VISIBLE_DEVICES=3, cuda:0 is NVML's GPU 3: an index lookup would key the baseline
    by GPU 0's power limit."""
    import pynvml
    from types import SimpleNamespace
    limits_mw = {"00000000:00:00.0": 700_000, "00000000:c3:00.0": 350_000}  # NVML's GPU 0, and the one behind cuda:0
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: SimpleNamespace(pci_domain_id=0, pci_bus_id=0xC3, pci_device_id=0))
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda index: "00000000:00:00.0")
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByPciBusId", lambda bus_id: bus_id)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetEnforcedPowerLimit", lambda handle: limits_mw[handle])
    assert _power_limit_w(torch.device("cuda:0")) == 350.0


@pytest.fixture(scope="module")
def hardware() -> str:
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    env = collect_env(device)
    return baseline_key(hardware_key(env), env["driver"], _power_limit_w(device))


def fixed_batch(trainer: Trainer, batch_size: int):
    device = trainer.device
    return (torch.rand(batch_size, 4, 64, 64, device=device), torch.rand(batch_size, 4, 64, 64, device=device),
            torch.randint(0, 2, (batch_size,), device=device))


def make_trainer(variant: Variant, device: torch.device) -> Trainer:
    torch._dynamo.reset()  # each case compiles its own static-shape graph, as `bench all` does
    return Trainer(variant, RunConfig(data_root="", train_ids=[], val_ids=[], device=device, epochs=1))


def synchronised(fn, device: torch.device):
    def call():
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out
    return call


def time_training(benchmark, hardware, variant: Variant, device: torch.device) -> None:
    """Times trainer.step and checks what it timed: a finite loss and parameters that moved."""
    trainer = make_trainer(variant, device)
    rgb, lidar, label = fixed_batch(trainer, variant.batch_size)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    benchmark.extra_info.update(samples_per_call=variant.batch_size, hardware_key=hardware)
    loss = benchmark.pedantic(synchronised(lambda: trainer.step(rgb, lidar, label), device),
                              rounds=ROUNDS, warmup_rounds=WARMUP)
    assert torch.isfinite(loss).item()
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, trainer.model.parameters()))


def time_inference(benchmark, hardware, variant: Variant, device: torch.device) -> None:
    trainer = make_trainer(variant, device)
    trainer.model.eval()
    rgb, lidar, _ = fixed_batch(trainer, variant.batch_size)

    @torch.no_grad()
    def infer():
        return trainer.logits(rgb, lidar)

    benchmark.extra_info.update(samples_per_call=variant.batch_size, hardware_key=hardware)
    logits = benchmark.pedantic(synchronised(infer, device), rounds=ROUNDS, warmup_rounds=WARMUP)
    assert logits.shape == (variant.batch_size, 2) and torch.isfinite(logits.float()).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_cpu_training_step(benchmark, hardware, arch):
    time_training(benchmark, hardware, Variant(arch, batch_size=8), torch.device("cpu"))


@pytest.mark.parametrize("arch", ARCHS)
def test_cpu_inference_step(benchmark, hardware, arch):
    time_inference(benchmark, hardware, Variant(arch, batch_size=8), torch.device("cpu"))


gpu_variants = pytest.mark.parametrize("variant", [
    Variant(arch, precision=precision, compile_mode=mode, batch_size=batch)
    for arch, precision, mode, batch in GPU_VARIANTS
], ids=[f"{arch}-{precision}-{mode}-b{batch}" for arch, precision, mode, batch in GPU_VARIANTS])


@requires_cuda
@pytest.mark.gpu
@gpu_variants
def test_gpu_training_step(benchmark, hardware, variant):
    time_training(benchmark, hardware, variant, torch.device("cuda"))


@requires_cuda
@pytest.mark.gpu
@gpu_variants
def test_gpu_inference_step(benchmark, hardware, variant):
    time_inference(benchmark, hardware, variant, torch.device("cuda"))


@pytest.mark.parametrize("kind", ["torch", "resident", "dali"])
def test_loader_batch(benchmark, hardware, tiny_data, kind):
    """One ready batch on the device; epochs roll over so every round gets a batch."""
    if kind == "dali":
        pytest.importorskip("nvidia.dali")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    workers = 0 if kind == "torch" else 1
    loader = make_loader(kind, tiny_data, discover_ids(tiny_data), batch_size=32, device=device, workers=workers)
    batches = itertools.chain.from_iterable(iter(loader) for _ in itertools.count())
    benchmark.extra_info.update(samples_per_call=32, hardware_key=hardware, loader_form=loader.form)
    rgb, lidar, label = benchmark.pedantic(synchronised(lambda: next(batches), device), rounds=ROUNDS,
                                           warmup_rounds=WARMUP)
    assert rgb.shape == lidar.shape == (32, 4, 64, 64) and label.shape == (32,)

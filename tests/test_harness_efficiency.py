"""Harness efficiency: the plain reference loop, the Trainer choices it exposed (fused Adam on
CUDA, no GradScaler without fp16), and the energy windows of one measured variant."""

import importlib
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from bench.worker import runner
from bench.config import RunConfig, RunContext
from bench.instruments.nvml import COLUMNS
from bench.parent.matrix import nvml_columns
from bench.worker import reference_loop, trainer as trainer_module
from bench.worker.reference_loop import efficiency, reference_samples_per_s
from bench.worker.trainer import Trainer, adam
from bench.variants import Variant
from loaders.dataset import discover_ids
from loaders.split import make_split
from models import count_parameters, count_stored_parameters


@pytest.fixture(scope="module")
def cfg(tiny_data):
    split = make_split(discover_ids(tiny_data), seed=42)
    return RunConfig(data_root=str(tiny_data), train_ids=split["train"][:16], val_ids=split["val"][:8],
                     device=torch.device("cpu"), epochs=2, warmup_steps=1, infer_iters=0, workers=0, progress=False,
                     reference_steps=1)


def _built_models(monkeypatch) -> list:
    """The models the reference loop builds, as it builds them."""
    built, real = [], reference_loop.build_model
    monkeypatch.setattr(reference_loop, "build_model", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    return built


def test_reference_loop_trains_the_variant_model(monkeypatch):
    """The variant's network (add: 7,074,334 parameters) in its memory format, trained: every
    warm-up and timed step computes a loss on a batch of the variant's size and moves the
    weights away from the seeded init; one rate per round."""
    built, batches = _built_models(monkeypatch), []
    real_loss = reference_loop.F.cross_entropy
    monkeypatch.setattr(reference_loop.F, "cross_entropy", lambda logits, label: batches.append(len(label)) or real_loss(logits, label))
    rates = reference_samples_per_s(Variant("add", memory_format="channels_last", batch_size=4), torch.device("cpu"), steps=2,
                            warmup=1, min_rounds=3, max_rounds=3)
    (model,) = built
    assert count_parameters(model) == 7_074_334 and batches == [4] * (1 + 3 * 2)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.manual_seed(42)
    init = reference_loop.build_model("add", "maxpool")
    assert all(not torch.equal(a, b) for a, b in zip(model.parameters(), init.parameters()))
    assert len(rates) == 3 and all(r > 0 for r in rates)


def test_reference_loop_builds_the_variants_channel_layout(monkeypatch):
    """harness_efficiency compares like with like: an aligned variant's plain loop trains the aligned network."""
    built = _built_models(monkeypatch)
    reference_samples_per_s(Variant("add", channels="aligned", batch_size=2), torch.device("cpu"), 1, 1, min_rounds=2, max_rounds=2)
    assert [count_stored_parameters(m) > count_parameters(m) for m in built] == [True]


def test_reference_rounds_stop_once_resolved_or_at_the_cap(monkeypatch):
    """At least min_rounds; beyond them, rounds go on while the 95 % interval of the mean rate is
    wider than PLAIN_RESOLUTION, up to max_rounds (round times stood in for: 10 ms per step, and
    20 ms in the noisy case's every other round)."""
    def rounds(pattern):
        calls = iter(range(100))
        monkeypatch.setattr(reference_loop, "time_calls",
                            lambda fn, steps, device, warmup: __import__("numpy").full(steps, pattern[next(calls) % len(pattern)]))
        return reference_samples_per_s(Variant("add", batch_size=2), torch.device("cpu"), 2, 0, min_rounds=3, max_rounds=6)
    assert rounds([10.0]) == pytest.approx([200.0] * 3)  # steady: resolved at the minimum
    assert len(rounds([10.0, 20.0])) == 6  # 200, 100, 200, ... samples/s never resolve: the cap


def test_efficiency_interval_from_both_sides():
    """Known answers: no spread, a zero-width interval; spread on both sides, the Welch interval
    on the log scale written out; fewer than two values on a side, no interval."""
    exact = efficiency(200.0, [200.0, 200.0, 200.0], [100.0, 100.0])
    assert exact["harness_efficiency"] == 2.0 and exact["reference_samples_per_s"] == 100.0
    assert exact["harness_efficiency_ci95_low"] == exact["harness_efficiency_ci95_high"] == 2.0
    assert exact["harness_efficiency_resolved"] and exact["reference_rounds"] == 2
    h, p = [90.0, 110.0], [95.0, 100.0, 105.0]
    got = efficiency(100.0, h, p)
    vh, vp = np.var(np.log(h), ddof=1) / 2, np.var(np.log(p), ddof=1) / 3
    df = (vh + vp) ** 2 / (vh ** 2 / 1 + vp ** 2 / 2)
    from scipy import stats
    half = stats.t.ppf(0.975, df) * np.sqrt(vh + vp)
    assert got["harness_efficiency"] == 1.0
    assert got["harness_efficiency_ci95_low"] == pytest.approx(np.exp(-half))
    assert got["harness_efficiency_ci95_high"] == pytest.approx(np.exp(half))
    assert not got["harness_efficiency_resolved"]  # 10 % apart from 2 epochs: far wider than 0.05
    one = efficiency(100.0, [100.0], p)
    assert one["harness_efficiency"] == 1.0 and np.isnan(one["harness_efficiency_ci95_low"])
    assert not one["harness_efficiency_resolved"]
    assert np.isnan(efficiency(100.0, h, [])["harness_efficiency"])  # no plain loop (--nproc, reference_steps 0)


def test_adam_is_fused_on_cuda_and_named_in_the_row(cfg, monkeypatch):
    """A Trainer that sets up Adam as on CUDA (CPU tensors stand in: torch's fused Adam runs on the
    CPU too) runs Adam's fused kernel, one call per step for all parameters, and its row names
    it; on the CPU the for-loop Adam runs, one parameter at a time, and is named so."""
    adam_module = importlib.import_module("torch.optim.adam")
    fused, single = [], []
    real_fused, real_single = torch._fused_adam_, adam_module._single_tensor_adam
    monkeypatch.setattr(torch, "_fused_adam_", lambda params, *a, **k: fused.append(len(params)) or real_fused(params, *a, **k))
    monkeypatch.setattr(adam_module, "_single_tensor_adam",
                        lambda params, *a, **k: single.append(len(params)) or real_single(params, *a, **k))
    variant = Variant("add", batch_size=8, loader="resident")
    cpu = Trainer(variant, cfg)
    cpu.step(torch.rand(8, 4, 64, 64), torch.rand(8, 4, 64, 64), torch.zeros(8, dtype=torch.int64))
    n_params = len(list(cpu.model.parameters()))
    assert cpu.optimizer_name == "adam-forloop" and single == [n_params] and fused == []
    single.clear()
    monkeypatch.setattr(trainer_module, "adam", lambda params, lr, device: adam(params, lr, torch.device("cuda")))
    row = runner.measure(variant, replace(cfg, epochs=1, reference_steps=0)).row
    assert row["optimizer"] == "adam-fused" and fused == [n_params] * 2 and single == []  # 16 samples: 2 steps


@pytest.mark.parametrize("precision,scaled", [("fp32", False), ("bf16", False), ("fp16", True)])
def test_grad_scaler_only_for_fp16(cfg, precision, scaled):
    trainer = Trainer(Variant("add", precision=precision, batch_size=2), cfg)
    assert (trainer.scaler is not None) == scaled


def test_step_returns_the_loss_detached_on_the_device(cfg):
    trainer = Trainer(Variant("add", batch_size=2), cfg)
    before = next(trainer.model.parameters()).detach().clone()
    loss = trainer.step(torch.rand(2, 4, 64, 64), torch.rand(2, 4, 64, 64), torch.tensor([0, 1]))
    assert loss.grad_fn is None and loss.device == cfg.device and torch.isfinite(loss)
    assert not torch.equal(before, next(trainer.model.parameters()))


def test_step_mode_captures_on_the_first_batch_and_trains_like_eager(cfg, monkeypatch):
    """The Trainer's --compile-mode step path into CapturedStep, with the CUDA-only calls stood in
    for as in test_step_capture.py (warm-up runs the body, each replay runs it again) and
    torch.compile the identity: captured once, then the same losses and weights as eager."""
    from bench.worker import step_capture
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: model)
    monkeypatch.setattr(step_capture, "fallback_reason", lambda device: None)
    monkeypatch.setattr(step_capture, "_warm_up", lambda body, steps: [body() for _ in range(steps)])
    monkeypatch.setattr(step_capture, "_capture", lambda body: body)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(2, 4, 64, 64, generator=g), torch.rand(2, 4, 64, 64, generator=g), torch.tensor([0, 1]))
               for _ in range(3)]
    step = Trainer(Variant("add", compile_mode="step", batch_size=2), cfg)
    eager = Trainer(Variant("add", batch_size=2), cfg)
    losses = [[t.step(*batch) for batch in batches] for t in (step, eager)]
    assert type(step.captured) is step_capture.CapturedStep and step.optimizer_name == "adam-fused-capturable"
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    for mine, theirs in zip(step.model.parameters(), eager.model.parameters()):  # Adam moves each by <= lr 1e-4 a step;
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)  # fused and for-loop Adam round apart near eps


def test_reference_is_measured_once_per_model_setting(cfg, monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "reference_samples_per_s", lambda v, *a, **k: calls.append(v.name) or [900.0, 1100.0])
    ctx, variant = RunContext(), Variant("add", batch_size=8, loader="resident")
    rows = [runner.measure(v, replace(cfg, epochs=1), ctx).row for v in (variant, replace(variant, loader="torch", epochs=1))]
    assert len(calls) == 1
    assert [r["harness_efficiency"] for r in rows] == pytest.approx([r["train_samples_per_s"] / 1000.0 for r in rows])


class ConstantPowerSampler:
    """Stands in for NvmlSampler: 100 W and a steady energy counter, one sample per millisecond
    from its creation to the moment the timeline is read."""
    period_s = 0.001
    counter_period_s = 0.001

    def __init__(self):
        self.t0 = time.perf_counter()

    def mark(self, label, at=None):
        pass

    def timeline(self):
        t = np.arange(self.t0, time.perf_counter(), 0.001)
        data = {name: np.zeros(len(t)) for name in COLUMNS}
        data.update(time=t, power_w=np.full(len(t), 100.0), energy_mj=(t - self.t0) * 100_000.0)
        return pd.DataFrame(data)


def test_energy_windows_of_a_measured_variant(cfg):
    """Steady energy covers the timed steps only; compile, validation and the whole phase are
    separate, and the parts fit inside the phase."""
    ctx = RunContext(sampler=ConstantPowerSampler(), idle_power_w=40.0)
    result = runner.measure(Variant("add", batch_size=8, loader="resident"), cfg, ctx)
    row = {**result.row, **nvml_columns(result.phases, cfg, ctx)}  # cut from the parent's timeline
    steady_samples = (2 * 2 - cfg.warmup_steps) * 8
    assert row["samples_per_j"] == pytest.approx(steady_samples / row["energy_j"])
    parts = row["energy_j"] + row["compile_energy_j"] + row["val_energy_j"]
    assert 0 < row["energy_j"] < parts <= row["phase_energy_j"] * (1 + 1e-9)
    assert row["energy_above_idle_j"] == pytest.approx(row["energy_j"] * (1 - 40.0 / 100.0))
    assert row["energy_j_pm"] == pytest.approx(2 * 0.001 * 100.0 * cfg.epochs)  # one steady window an epoch
    assert row["energy_source"] == "counter" and np.isnan(row["time_to_target_s"]) == ("j_to_target" not in row)

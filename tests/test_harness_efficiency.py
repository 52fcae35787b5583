"""Harness efficiency: the plain reference loop, the Trainer choices it exposed (fused Adam on
CUDA, no GradScaler without fp16), and the energy windows of one measured variant."""

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
from bench.worker.reference_loop import reference_samples_per_s
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
                     reference_steps=2)


def test_reference_loop_trains_the_variant_model():
    sps = reference_samples_per_s(Variant("add", memory_format="channels_last", batch_size=4), torch.device("cpu"),
                                  steps=2, warmup=1)
    assert sps > 0


def test_reference_loop_builds_the_variants_channel_layout(monkeypatch):
    """harness_efficiency compares like with like: an aligned variant's plain loop trains the aligned network."""
    from bench.worker import reference_loop
    built, real = [], reference_loop.build_model
    monkeypatch.setattr(reference_loop, "build_model", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    assert reference_samples_per_s(Variant("add", channels="aligned", batch_size=2), torch.device("cpu"), 1, 1) > 0
    assert [count_stored_parameters(m) > count_parameters(m) for m in built] == [True]


def test_adam_is_fused_on_cuda_and_named_in_the_row():
    params = [torch.nn.Parameter(torch.zeros(3))]
    optimizer, name = adam(params, 1e-3, torch.device("cuda"))
    assert name == "adam-fused" and optimizer.defaults["fused"] is True
    optimizer, name = adam(params, 1e-3, torch.device("cpu"))
    assert name == "adam-forloop" and not optimizer.defaults["fused"]


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
    monkeypatch.setattr(runner, "reference_samples_per_s", lambda v, *a, **k: calls.append(v.name) or 1000.0)
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

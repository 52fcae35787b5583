"""The energy window: a variant's last epochs trained back to back (their evaluations after it,
from copies of their weights), with steps after the last epoch where they fall short, in one
window long enough for the NVML counter to resolve, and the headline energy figures taken from it.

The 2-rank test starts this file under torchrun (`python -m torch.distributed.run
--nproc-per-node 2 tests/test_energy_window.py OUT`); each rank runs the window with a stub
trainer and leaves how many steps it took in OUT.
"""

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench.config import RunConfig, RunContext
from bench.distributed import torchrun_command
from bench.instruments.nvml import COLUMNS, MAX_ENERGY_WINDOW_S, MIN_COUNTER_PERIODS, energy_window_s
from bench.parent.matrix import nvml_columns
from bench.variants import Variant
from bench.worker import runner
from conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]


class CountingTrainer:
    """Stands in for Trainer: records the label of each batch it steps on, 1 ms a step."""

    def __init__(self):
        self.labels = []

    def step(self, rgb, lidar, label):
        time.sleep(0.001)
        self.labels.append(int(label[0]))
        return torch.zeros(())


def stub_run(batches: int = 2) -> runner.TrainingRun:
    """A finished training run of 4 steps of 20 ms, its loader `batches` batches labelled 0, 1, ..."""
    loader = [(torch.zeros(1), torch.zeros(1), torch.tensor([b])) for b in range(batches)]
    return runner.TrainingRun(CountingTrainer(), val_loader=None, t_start=0.0, train_loader=loader,
                              data_ms=np.full(4, 5.0), compute_ms=np.full(4, 15.0))


def stub_config(window_s: float) -> RunConfig:
    return RunConfig(data_root="", train_ids=[], val_ids=[], device=torch.device("cpu"), warmup_steps=1,
                     progress=False, energy_window_s=window_s)


def test_the_window_is_50_counter_periods_capped_and_off_without_a_period():
    assert energy_window_s(0.1) == pytest.approx(MIN_COUNTER_PERIODS * 0.1)
    assert energy_window_s(1.5) == MAX_ENERGY_WINDOW_S
    assert energy_window_s(math.nan) == energy_window_s(0.0) == 0.0


def test_window_steps_the_loader_epoch_after_epoch_until_it_lasts_the_budget():
    run = stub_run()
    window, steps = runner.train_energy_window(run, stub_config(0.05))
    assert window[1] - window[0] >= 0.05  # planned at 20 ms a step (3), then at the window's own rate
    assert steps == len(run.trainer.labels) > 3
    assert run.trainer.labels == [0, 1] * (steps // 2) + [0] * (steps % 2)  # the loader again from its start


def test_no_window_and_no_step_when_off():
    run = stub_run()
    assert runner.train_energy_window(run, stub_config(0.0)) == (None, 0)
    assert run.trainer.labels == []


def test_a_one_epoch_variant_takes_its_window_after_the_epoch(tiny_data, split):
    cfg = tiny_config(tiny_data, split, energy_window_s=0.05, reference_steps=0, infer_iters=0)
    ctx = RunContext(sampler=ConstantPowerSampler(), idle_power_w=40.0)
    variant = Variant("add", batch_size=8, loader="resident")
    result = runner.measure(variant, cfg, ctx)
    phases = result.phases
    t0, t1 = phases.energy_window
    assert t1 - t0 >= 0.05 and phases.energy_steps >= 1 and t0 >= phases.eval_windows[-1][1]  # after its evaluation
    labels = [label for _, label in phases.marks]
    assert labels[:3] == [f"{variant.name}:train:0", f"{variant.name}:energy", f"{variant.name}:train:0"]
    assert labels[-2:] == [f"{variant.name}:reference", "idle"]
    assert len(result.steps) == phases.steps - cfg.warmup_steps == 1  # steps.csv: the epoch's timed step only
    row = nvml_columns(phases, cfg, ctx)
    assert row["energy_window_s"] == pytest.approx(t1 - t0)
    assert row["energy_j"] == pytest.approx(100.0 * (t1 - t0), rel=1e-6)
    assert row["samples_per_j"] == pytest.approx(phases.energy_steps * 8 / row["energy_j"])
    assert row["energy_resolved"] is True  # 0.05 s is 100 periods of this counter


def test_the_last_epochs_train_back_to_back_and_keep_the_seeds_curves(tiny_data, split):
    """With a window, the last epochs form it and are evaluated after it, each from its own
    weights: every curve value is what the seed's loop (an evaluation after each epoch) gives."""
    settings = dict(epochs=4, reference_steps=0, infer_iters=0)
    variant = Variant("add", batch_size=8, loader="resident")
    plain = runner.measure(variant, tiny_config(tiny_data, split, **settings))
    windowed = runner.measure(variant, tiny_config(tiny_data, split, energy_window_s=2.0, **settings),
                              RunContext(sampler=ConstantPowerSampler()))
    columns = ["epoch", "train_loss", "val_loss", "accuracy", "lr"]
    assert [[c[k] for k in columns] for c in windowed.curves] == [[c[k] for k in columns] for c in plain.curves]
    assert windowed.row["val_loss"] == plain.row["val_loss"] and windowed.row["final_train_loss"] == plain.row["final_train_loss"]
    phases = windowed.phases
    t0, t1 = phases.energy_window
    # the window opens after the first epoch from which the rest, at its length, would fall short
    epoch_s = [c["epoch_s"] for c in windowed.curves]
    start = next(e for e in range(4) if (4 - e - 2) * epoch_s[e] < 2.0) + 1
    assert phases.eval_windows[start - 1][1] <= t0 <= phases.steady_windows[start][0] and t1 - t0 >= 2.0
    assert phases.energy_steps >= 2 * (4 - start)  # its epochs' steps (2 each), and any steps after them
    assert [w[0] >= t1 for w in phases.eval_windows[start:]] == [True] * (4 - start)  # evaluated after it
    assert t1 <= phases.t_end and phases.t_start <= t0
    elapsed = [c["elapsed_s"] for c in windowed.curves]
    assert elapsed == sorted(elapsed) and elapsed[-1] <= t1 - phases.t_start  # to the end of each epoch's training
    labels = [label for _, label in phases.marks]
    assert labels[:3] == [f"{variant.name}:train:0", f"{variant.name}:energy", f"{variant.name}:train:0"]


def test_a_non_finite_validation_loss_after_the_window_names_its_epoch(tiny_data, split, monkeypatch):
    """The last epoch is always in the window, so it is evaluated after it; its non-finite
    validation loss fails the variant naming that epoch, as an inline evaluation does."""
    evaluate = runner.Trainer.evaluate
    calls = []

    def nan_at_the_last(self, loader):
        calls.append(1)
        loss, accuracy = evaluate(self, loader)
        return (math.nan if len(calls) == 3 else loss), accuracy
    monkeypatch.setattr(runner.Trainer, "evaluate", nan_at_the_last)
    cfg = tiny_config(tiny_data, split, epochs=3, energy_window_s=0.01, reference_steps=0, infer_iters=0)
    with pytest.raises(FloatingPointError, match=r"^validation loss is not finite at epoch 2$"):
        runner.measure(Variant("add", batch_size=8, loader="resident"), cfg, RunContext(sampler=ConstantPowerSampler()))


def test_the_window_starts_as_late_as_the_epochs_still_fill_it():
    cfg = replace(stub_config(5.2), epochs=20)
    starts = [e for e in range(20) if runner._window_starts_next(cfg, e, 0.5)]
    assert starts[0] == 8  # epochs 9-19: 11 x 0.5 s = 5.5 s; from epoch 10, 5.0 s would fall short
    assert not runner._window_starts_next(cfg, 19, 0.5)  # no epoch after the last
    assert not any(runner._window_starts_next(replace(cfg, energy_window_s=0.0), e, 0.5) for e in range(20))


def test_measured_without_a_window_trains_the_epochs_only(tiny_data, split, monkeypatch):
    calls, step = [], runner.Trainer.step
    monkeypatch.setattr(runner.Trainer, "step", lambda self, *batch: calls.append(1) or step(self, *batch))
    cfg = tiny_config(tiny_data, split, reference_steps=0, infer_iters=0)
    phases = runner.measure(Variant("add", batch_size=8, loader="resident"), cfg, RunContext()).phases
    assert phases.energy_window is None and phases.energy_steps == 0
    assert len(calls) == phases.steps == 2  # 16 samples, batch 8, one epoch
    assert not any(label.endswith(":energy") for _, label in phases.marks)


def test_a_pipeline_probe_takes_no_window_inference_or_robustness(tiny_data, split):
    """A probe row (its own few epochs: the seed pipeline, DALI) measures a loader's speed; its
    energy stays the epochs' windows, flagged, and its inference and robustness are the main row's
    (the same model settings), so the default GPU run spends on it its epochs only."""
    cfg = tiny_config(tiny_data, split, energy_window_s=0.05, reference_steps=0, infer_iters=2, robustness=True)
    result = runner.measure(Variant("add", batch_size=8, loader="resident", epochs=2), cfg,
                            RunContext(sampler=ConstantPowerSampler()))
    assert result.phases.energy_window is None and result.phases.energy_steps == 0
    assert result.inference == [] and result.robustness == [] and len(result.curves) == 2
    assert math.isnan(result.row["infer_samples_per_s"])


class ConstantPowerSampler:
    """Stands in for NvmlSampler: 100 W and a steady energy counter sampled every 0.5 ms, from its
    creation to the moment the timeline is read; its counter moves every 0.5 ms."""
    counter_period_s = 0.0005

    def __init__(self):
        self.t0 = time.perf_counter()

    def mark(self, label, at=None):
        pass

    def timeline(self):
        t = np.arange(self.t0, time.perf_counter(), 0.0005)
        data = {name: np.zeros(len(t)) for name in COLUMNS}
        data.update(time=t, power_w=np.full(len(t), 100.0), energy_mj=(t - self.t0) * 100_000.0)
        return pd.DataFrame(data)


class StepPowerSampler:
    """A recorded timeline: 50 W from 0 to 10 s but 100 W over [6.0, 6.2], sampled every 1 ms, an
    exact energy counter moving every 1 ms."""
    counter_period_s = 0.001

    def timeline(self):
        t = np.arange(0.0, 10.0, 0.001)
        data = {name: np.zeros(len(t)) for name in COLUMNS}
        data.update(time=t, power_w=np.where((t >= 6.0) & (t <= 6.2), 100.0, 50.0),
                    energy_mj=1000 * (50 * t + 50 * np.clip(t - 6.0, 0.0, 0.2)))
        return pd.DataFrame(data)


def phases(energy_window, energy_steps: int = 10) -> runner.Phases:
    """A variant of batch 8 whose epochs had 20 steps and steady windows [1, 1.5] and [2, 2.5]."""
    return runner.Phases(t_start=0.5, t_end=3.0, steps=20, batch_size=8, time_to_target=math.nan,
                         warmup_window=(0.5, 1.0), steady_windows=[(1.0, 1.5), (2.0, 2.5)],
                         eval_windows=[(1.5, 2.0), (2.5, 3.0)], marks=[], energy_window=energy_window,
                         energy_steps=energy_steps)


def test_headline_energy_comes_from_the_window_and_is_resolved_from_50_periods():
    from reports.markdown import energy_table
    cfg, ctx = stub_config(0.2), RunContext(sampler=StepPowerSampler())
    row = nvml_columns(phases((6.0, 6.2)), cfg, ctx)
    assert row["energy_j"] == pytest.approx(20.0, rel=1e-3) and row["power_w_mean"] == pytest.approx(100.0)
    assert row["samples_per_j"] == pytest.approx(10 * 8 / 20.0, rel=1e-3) and row["energy_window_s"] == pytest.approx(0.2)
    assert row["energy_j_pm"] == pytest.approx(2 * 0.001 * 100.0, rel=1e-3) and row["energy_resolved"] is True
    assert row["phase_energy_j"] == pytest.approx(50 * 2.5, rel=1e-3)  # the epochs' phase, the window outside it
    text = energy_table(pd.DataFrame([{"variant": "v", "batch_size": 8, **row}]))
    cells = dict(zip(*[[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines()[2::2]]))
    assert cells["J/step"] == "2.000 ± 0.020" and cells["window s"] == "0.2"
    short = nvml_columns(phases((6.0, 6.04), energy_steps=2), cfg, ctx)  # 40 counter periods
    assert short["energy_j"] == pytest.approx(4.0, rel=1e-3) and short["energy_resolved"] is False


def test_without_a_window_the_headline_is_the_epochs_steady_steps():
    row = nvml_columns(phases(None, energy_steps=0), stub_config(0.0), RunContext(sampler=StepPowerSampler()))
    assert row["energy_j"] == pytest.approx(50.0, rel=1e-3) and math.isnan(row["energy_window_s"])
    assert row["samples_per_j"] == pytest.approx((20 - 1) * 8 / 50.0, rel=1e-3)


def test_every_rank_takes_rank_0s_steps(tmp_path):
    """Under torchrun rank 0's clock plans the window, and when it opens; rank 1 is configured off
    here for the steps after the epochs (as the ranks of a torchrun the user started, where rank 0
    alone measured the counter) and must follow."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    done = subprocess.run([*torchrun_command(2, [])[:5], str(Path(__file__)), str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["steps"] == ranks[1]["steps"] == ranks[1]["stepped"] > 0
    assert ranks[0]["window_s"] >= 0.05
    assert ranks[0]["starts"] is ranks[1]["starts"] is True  # the window opens on every rank at once


def _rank(out: Path) -> None:
    """One rank of the 2-process test (run by torchrun, see the module docstring)."""
    from bench.distributed import init, read_env, shutdown
    env = read_env()
    init(env, "cpu")
    cfg = stub_config(0.05 if env.rank == 0 else 0.0)
    run = stub_run(batches=1 + env.rank)  # the ranks' loaders differ in length
    runner.close_energy_window(run, cfg, window_start=None)  # after a single epoch
    window, steps = run.energy_window, run.energy_steps
    # rank 1 asks for no window (and its own 5 s epoch would open one later): it follows rank 0
    starts = runner._window_starts_next(replace(cfg, energy_window_s=5.2 * (env.rank == 0), epochs=20), 8,
                                        0.5 if env.rank == 0 else 5.0)
    record = {"steps": steps, "stepped": len(run.trainer.labels), "window_s": window[1] - window[0] if window else 0,
              "starts": starts}
    (out / f"rank{env.rank}.json").write_text(json.dumps(record))
    shutdown()


if __name__ == "__main__":
    _rank(Path(sys.argv[1]))

"""A diverged variant fails with where it diverged; "n/a" stays for what cannot be measured."""

import pytest
import torch

from bench.worker import runner
from bench.config import RunConfig
from bench.parent.matrix import run_matrix
from bench.worker.runner import measure
from bench.variants import Variant
from loaders.dataset import discover_ids
from loaders.split import make_split
from reports.results import RESULTS, read_table


@pytest.fixture
def nan_at_second_step(monkeypatch):
    step = runner.Trainer.step
    calls = []

    def diverging(self, rgb, lidar, label):
        calls.append(1)
        loss = step(self, rgb, lidar, label)
        return loss * float("nan") if len(calls) % 2 == 0 else loss  # the 2nd step of each run
    monkeypatch.setattr(runner.Trainer, "step", diverging)


def cfg(tiny_data):
    split = make_split(discover_ids(tiny_data), seed=42)
    return RunConfig(data_root=str(tiny_data), train_ids=split["train"][:16], val_ids=split["val"][:16],
                     device=torch.device("cpu"), epochs=1, warmup_steps=1, infer_iters=0, workers=0, progress=False)


def test_non_finite_loss_fails_the_variant_naming_epoch_and_step(tiny_data, nan_at_second_step, tmp_path):
    variant = Variant("add", batch_size=8, loader="resident")
    with pytest.raises(FloatingPointError, match=r"^loss is not finite at epoch 0, step 1$"):
        measure(variant, cfg(tiny_data))
    assert run_matrix([variant], cfg(tiny_data), tmp_path, {}) == 1
    row = read_table(tmp_path / RESULTS).iloc[0]
    assert row["status"] == "failed" and "loss is not finite at epoch 0, step" in row["error"]

"""torchrun through the harness: `bench all --nproc 2` on CPU with gloo writes one run directory,
the loaders read each rank's shard, and --scaling puts one- and N-process rows in one report."""

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench import distributed
from bench.parent import matrix as run_module
from bench.commands import all as all_command
from bench.cli import parser
from bench.config import RunConfig
from bench.errors import UsageError
from bench.parent.matrix import run_matrix
from bench.worker.runner import VariantResult
from bench.variants import Variant
from loaders import make_loader
from loaders.dataset import discover_ids, label_of
from loaders.order import epoch_order, shard_order
from loaders.split import make_split
from reports.results import RESULTS

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kind", ["torch", "resident"])
def test_loaders_read_their_rank_shard(tiny_data, kind):
    ids = make_split(discover_ids(tiny_data), seed=42)["train"][:20]
    seen = []
    for rank in (0, 1):
        loader = make_loader(kind, tiny_data, ids, batch_size=3, seed=5, workers=0, rank=rank, world=2)
        assert len(loader) == 3  # 10 samples per rank: 3 full batches on each, so both step alike
        labels = torch.cat([label for _, _, label in loader])
        shard = shard_order(epoch_order(len(ids), 5, 0), rank, 2)[:9]
        assert labels.tolist() == [label_of(ids[i]) for i in shard]  # the shard's samples, in its order
        seen.append(set(shard.tolist()))
    assert not seen[0] & seen[1]


def test_nproc_2_gloo_run_writes_one_run_directory(tiny_data, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    done = subprocess.run([sys.executable, "-m", "bench", "all", "--nproc", "2", "--device", "cpu", "--data",
                           str(tiny_data), "--arch", "add", "--epochs", "1", "--batch-size", "8", "--out", "run",
                           "--warmup-steps", "1", "--no-progress", "--workers", "0", "--no-robustness"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # rank 1 wrote nothing
    assert done.stdout.count("report: ") == 1
    results = pd.read_csv(tmp_path / "run" / RESULTS)
    assert len(results) == 1 and results.loc[0, "status"] == "ok" and results.loc[0, "world_size"] == 2
    steps = (len(make_split(discover_ids(tiny_data), seed=42)["train"]) // 2) // 8
    assert results.loc[0, "samples_trained"] == steps * 8 * 2  # each rank trained its own equal shard
    assert results.loc[0, "train_samples_per_s"] > 0 and 0 <= results.loc[0, "accuracy"] <= 100
    assert (tmp_path / "run" / "report.md").exists()


def fake_result(variant, cfg):
    """One process trains at 10 samples/s, two at 15: a scaling efficiency of 0.75."""
    row = {**variant.settings(), "seed": cfg.seed, "world_size": cfg.world_size, "status": "ok", "error": "",
           "epochs": 1, "train_samples": 16, "val_samples": 16, "loader_form": "resident", "params": 1,
           "val_loss": 0.5, "accuracy": 80.0, "sec_per_epoch": 1.0, "target_acc": 99.0,
           "train_samples_per_s": 10.0 * (1.5 if cfg.world_size == 2 else 1), "peak_mem_kind": "process_peak_rss",
           "peak_mem_mb": 1.0}
    return VariantResult(row, [], [])


def test_scaling_rows_resume_by_world_size_and_report_efficiency(tiny_data, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(run_module, "measure", lambda v, cfg, ctx=None: calls.append(cfg.world_size) or fake_result(v, cfg))
    cfg = RunConfig(data_root=str(tiny_data), train_ids=[], val_ids=[], device=torch.device("cpu"), progress=False)
    variants = [Variant("add", batch_size=8)]
    run_matrix(variants, cfg, tmp_path, {})
    run_matrix(variants, replace(cfg, world_size=2), tmp_path, {}, resume=True)  # the one-process row is no match
    assert calls == [1, 2]
    assert sorted(pd.read_csv(tmp_path / RESULTS)["world_size"]) == [1, 2]
    report = (tmp_path / "report.md").read_text()
    section = report.split("## Scaling over processes")[1]
    assert "0.75" in section.split("##")[0]  # 15 samples/s on 2 over 2 x 10 on 1


def test_scaling_launches_one_process_then_n_into_the_same_run(monkeypatch, tmp_path):
    launches = []
    monkeypatch.setattr(distributed, "launch", lambda n, argv: launches.append((n, argv)) or 0)
    monkeypatch.setattr(sys, "argv", ["bench", "all", "--nproc", "2", "--scaling", "--epochs", "1"])
    run = tmp_path / "run"
    args = parser().parse_args(["all", "--nproc", "2", "--scaling", "--epochs", "1", "--out", str(run)])
    assert all_command.run(args) == 0
    base = ["all", "--nproc", "2", "--epochs", "1"]
    assert launches == [(1, base + ["--out", str(run)]), (2, base + ["--resume", str(run)])]
    assert distributed.torchrun_command(1, launches[0][1])[-5:] == ["all", "--epochs", "1", "--out", str(run)]


def test_scaling_needs_nproc():
    with pytest.raises(UsageError, match="--scaling needs --nproc"):
        all_command.run(parser().parse_args(["all", "--scaling"]))


def test_rank0_samples_every_local_gpu_under_torchrun(monkeypatch):
    """Under torchrun on CUDA the sampler is built on cuda:0..LOCAL_WORLD_SIZE-1; alone, on the run's device."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    cuda0 = torch.device("cuda", 0)
    assert all_command.nvml_devices(cuda0, world_size=8) == [torch.device("cuda", i) for i in range(4)]
    assert all_command.nvml_devices(cuda0, world_size=1) == [cuda0]
    assert all_command.nvml_devices(torch.device("cpu"), world_size=2) == [torch.device("cpu")]
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert all_command.nvml_devices(cuda0, world_size=4) == [cuda0, torch.device("cuda", 1)]

    from bench.parent import nvml_overhead
    from bench.config import RunContext
    from bench.instruments import nvml

    class RecordingSampler:
        counter_period_s = 0.1  # what measure_idle_power measures of a real sampler

        def __init__(self, devices, period_s):
            self.devices, self.period_s = devices, period_s

        def measure_idle_power(self, seconds):
            return 200.0

        def start(self):
            pass

    monkeypatch.setattr(nvml, "nvml_unavailable_reason", lambda device: None)
    monkeypatch.setattr(nvml, "NvmlSampler", RecordingSampler)
    monkeypatch.setattr(nvml_overhead, "sampler_overhead", lambda cfg, devices, period_s, variant: {})
    ctx, env = RunContext(), {}
    all_command._start_nvml(None, ctx, 0.01, None, env, all_command.nvml_devices(cuda0, world_size=2))
    assert ctx.sampler.devices == [cuda0, torch.device("cuda", 1)] and env["idle_power_w"] == 200.0
    assert env["nvml_counter_period_s"] == 0.1

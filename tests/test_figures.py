"""Figures that were wrong by construction, each proven right on CPU with the CUDA calls patched:
MFU per GPU under several processes, MFU on logical FLOPs for aligned widths, reserved memory
that does not carry over between variants, and what a DALI row's CUDA peak leaves out."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from bench.config import RunConfig
from bench.instruments import memory
from bench.instruments.mfu import peak_flops, train_flops_per_sample
from bench.variants import Variant
from bench.worker import runner, trainer
from models import build_model
from reports.markdown import seed_table, speed_table

H200 = "NVIDIA H200"


# --- MFU: per GPU, on logical FLOPs -------------------------------------------------------------

def _finished_run(variant: Variant, cfg: RunConfig, step_ms: float, steps: int = 6) -> runner.TrainingRun:
    """A TrainingRun as train_once leaves it, with every step taking `step_ms` (no training)."""
    run = runner.TrainingRun(trainer.Trainer(variant, cfg), SimpleNamespace(form="resident"), t_start=0.0, t_end=1.0)
    run.data_ms, run.compute_ms = np.zeros(steps), np.full(steps, step_ms)
    run.curves = [{"val_loss": 0.5, "accuracy": 90.0, "epoch_s": 1.0, "eval_s": 0.1, "train_loss": 0.4}]
    run.epoch_sps = [1.0]
    return run


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_mfu_is_one_gpus_share_of_all_ranks_samples(monkeypatch, world_size):
    """Each rank trains 32 samples per 10 ms step: 3,200 samples/s per GPU whatever the world size;
    the row's samples/s is all ranks' (world_size x 3,200), its MFU one GPU's."""
    variant = Variant("add", precision="bf16", batch_size=32, loader="resident")
    cpu = RunConfig(data_root="", train_ids=["a"] * 64, val_ids=["b"] * 32, device=torch.device("cpu"), epochs=1,
                    warmup_steps=1, world_size=world_size)
    run = _finished_run(variant, cpu, step_ms=10.0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: H200)
    monkeypatch.setattr(runner.distributed, "global_samples_per_s", lambda samples, seconds, device: world_size * samples / seconds)
    cuda = RunConfig(**{**cpu.__dict__, "device": torch.device("cuda", 0)})
    row = runner.summarise(variant, cuda, [run], [], {"graphs": 0, "graph_breaks": 0}, reference=[])
    assert row["train_samples_per_s"] == pytest.approx(world_size * 3200)
    assert row["mfu_per_gpu"] == pytest.approx(row["flops_per_sample"] * 3200 / peak_flops(H200, "bf16"))


def test_aligned_widths_count_logical_flops_for_mfu_and_stored_flops_beside_them():
    """The aligned add network stores 1.10x the seed network's FLOPs (zero padding); MFU is held
    to the seed network's, which the aligned one computes."""
    cfg = RunConfig(data_root="", train_ids=[], val_ids=[], device=torch.device("cpu"), epochs=1)
    torch.manual_seed(0)
    seed_net = build_model("add")
    zeros = torch.zeros(2, 4, 64, 64)
    seed_flops = train_flops_per_sample(seed_net, zeros, zeros)
    logical, stored = runner._flops_per_sample(trainer.Trainer(Variant("add", channels="aligned"), cfg))
    assert logical == seed_flops
    assert stored / logical == pytest.approx(1.100, abs=5e-4)
    assert runner._flops_per_sample(trainer.Trainer(Variant("add"), cfg)) == (seed_flops, seed_flops)


def test_report_names_mfu_per_gpu_and_converts_runs_from_before_the_name():
    new = pd.DataFrame({"variant": ["a"], "loader": ["resident"], "loader_form": ["resident"], "world_size": [2],
                        "mfu_per_gpu": [0.25], "target_acc": [99.0], "compile_mode": ["none"]})
    old = new.drop(columns="mfu_per_gpu").assign(mfu=[0.5])  # all ranks' samples/s over one GPU's peak
    for table in (new, old):
        text = speed_table(table.reindex(columns=[*table.columns, "train_samples_per_s", "train_samples_per_s_std",
                                                  "step_ms_p50", "step_ms_p90", "step_ms_p99", "data_wait_share",
                                                  "compile_s", "infer_samples_per_s", "time_to_target_s"]))
        header, _, row = text.splitlines()[:3]
        assert header.rstrip(" |").endswith("MFU % per GPU") and float(row.rstrip(" |").split("|")[-1]) == 25.0


# --- memory: reserved peaks per variant, and what a DALI row leaves out -----------------------

class CachingAllocator:
    """torch's caching allocator in miniature: freed blocks stay reserved until empty_cache, and
    reset_peak_memory_stats sets the peaks to what is allocated and reserved now."""

    def __init__(self):
        self.allocated = self.reserved = self.peak_allocated = self.peak_reserved = 0

    def run_variant(self, mib: int) -> None:
        self.allocated += mib * 2**20
        self.reserved = max(self.reserved, self.allocated)
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        self.peak_reserved = max(self.peak_reserved, self.reserved)
        self.allocated -= mib * 2**20  # its tensors freed, their blocks kept in the cache

    def empty_cache(self) -> None:
        self.reserved = self.allocated

    def reset_peak_memory_stats(self, device=None) -> None:
        self.peak_allocated, self.peak_reserved = self.allocated, self.reserved


@pytest.fixture
def allocator(monkeypatch):
    fake = CachingAllocator()
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", fake.empty_cache)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", fake.reset_peak_memory_stats)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: fake.peak_allocated)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: fake.peak_reserved)
    return fake


def _peaks(allocator: CachingAllocator, mib: int) -> tuple[float, float]:
    device = torch.device("cuda", 0)
    memory.reset_peak(device)
    allocator.run_variant(mib)
    peak = memory.read_peak(device)
    return peak["peak_mem_mb"], peak["peak_reserved_mb"]


def test_a_large_variant_before_a_small_one_leaves_the_small_ones_peaks_unchanged(allocator):
    small_alone = _peaks(allocator, 10)  # the first variant of a fresh process
    assert small_alone == (10.0, 10.0)
    assert _peaks(allocator, 1000) == (1000.0, 1000.0)
    assert _peaks(allocator, 10) == small_alone


def test_dali_rows_say_their_cuda_peak_leaves_out_dalis_pool_with_nvml_beside_it():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert memory.excluded(cuda, "dali") and not memory.excluded(cuda, "resident") and not memory.excluded(cpu, "dali")
    rows = pd.DataFrame({"variant": ["add-resident", "add-dali"], "epochs": 3, "val_loss": 0.1, "accuracy": 99.0,
                         "params": 7074334, "sec_per_epoch": 1.0, "peak_mem_kind": "cuda_max_allocated",
                         "val_samples": 1200, "batch_size": 32,
                         "peak_mem_mb": [700.0, 90.0], "peak_mem_excludes": ["", memory.excluded(cuda, "dali")],
                         "nvml_mem_peak_mb": [1500.0, 1900.0]})
    resident, dali = seed_table(rows).split("\n\n")
    assert "peak mem MB (CUDA max allocated)" in resident and "add-dali" not in resident
    assert "without DALI's device memory pool" in dali.splitlines()[0] and "add-dali" in dali
    assert "NVML device used peak MB" in dali.splitlines()[0] and "1,900" in dali

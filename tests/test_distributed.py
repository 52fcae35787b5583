"""torchrun / DDP support: shards, reductions, the launcher, and a real 2-process gloo run.

The 2-process test starts this file under torchrun (`python -m torch.distributed.run
--nproc-per-node 2 tests/test_distributed.py OUT DATA`); each rank trains two DDP steps of the
add fusion network on its shard of tiny_data and leaves what it saw in OUT for the checks.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from bench.distributed import (DistEnv, broadcast_from_rank0, global_samples_per_s, is_rank0, node_gpus, read_env,
                               reduce_sums, scaling_efficiency, torchrun_command)
from bench.errors import UsageError
from loaders.order import ShardSampler, epoch_order, shard_order

ROOT = Path(__file__).resolve().parents[1]


def test_read_env_defaults_and_torchrun_values():
    assert read_env({}) == DistEnv(0, 0, 1) and not read_env({}).enabled
    env = read_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert env == DistEnv(3, 1, 4) and env.enabled
    with pytest.raises(UsageError, match="expected 0 <= RANK < WORLD_SIZE"):
        read_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(UsageError, match="must be integers"):
        read_env({"RANK": "zero"})


@pytest.mark.parametrize("n, world", [(96, 2), (77, 2), (100, 3), (5, 4)])
def test_training_shards_are_disjoint_equal_and_cover_all_but_the_tail(n, world):
    order = epoch_order(n, seed=42, epoch=3)
    shards = [shard_order(order, rank, world) for rank in range(world)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == n // world
    seen = np.concatenate(shards)
    assert len(set(seen.tolist())) == len(seen) and np.array_equal(seen, order[:n // world * world])


def test_evaluation_shards_keep_every_sample_once_as_dali_splits_them():
    order = epoch_order(1200, seed=42, epoch=0, shuffle=False)
    shards = [shard_order(order, rank, 7, even=False) for rank in range(7)]
    assert np.array_equal(np.concatenate(shards), order)
    # DALI's readers: shard k reads [k * N // S, (k + 1) * N // S)
    assert [len(s) for s in shards] == [(k + 1) * 1200 // 7 - k * 1200 // 7 for k in range(7)]
    with pytest.raises(ValueError, match="rank 7 is not in a world of 7"):
        shard_order(order, 7, 7)


def test_shard_sampler_follows_the_shared_epoch_order():
    sampler = ShardSampler(10, seed=1, rank=1, world=2)
    first, second = list(sampler), list(sampler)
    assert len(sampler) == 5
    assert first == epoch_order(10, 1, 0)[5:].tolist() and second == epoch_order(10, 1, 1)[5:].tolist()


def test_single_process_reductions_are_identities():
    cpu = torch.device("cpu")
    assert is_rank0()
    assert reduce_sums({"correct": 3, "total": 4, "loss": 0.5}, cpu) == {"correct": 3.0, "total": 4.0, "loss": 0.5}
    assert global_samples_per_s(1000, 2.0, cpu) == 500.0
    assert broadcast_from_rank0(["a"]) == ["a"]


def test_scaling_efficiency():
    assert scaling_efficiency(3600.0, 1000.0, 4) == pytest.approx(0.9)
    assert scaling_efficiency(1000.0, 1000.0, 1) == 1.0
    assert np.isnan(scaling_efficiency(1000.0, 0.0, 2))


def test_torchrun_command_drops_nproc():
    command = torchrun_command(4, ["all", "--nproc", "4", "--seeds", "42,43", "--nproc=4", "--profile", "seed"])
    assert command[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", "-m"]
    assert command[6:] == ["bench", "all", "--seeds", "42,43", "--profile", "seed"]


def test_node_gpus_lists_every_nvml_device():
    import pynvml
    handles = {0: "h0", 1: "h1"}
    with mock.patch.multiple(pynvml, nvmlInit=mock.DEFAULT, nvmlShutdown=mock.DEFAULT,
                             nvmlDeviceGetCount=mock.Mock(return_value=2),
                             nvmlDeviceGetHandleByIndex=mock.Mock(side_effect=handles.get),
                             nvmlDeviceGetName=mock.Mock(side_effect=lambda h: f"NVIDIA H100 {h}".encode()),
                             nvmlDeviceGetPciInfo=mock.Mock(side_effect=lambda h: mock.Mock(busId=f"bus-{h}".encode()))):
        gpus = node_gpus()
    assert gpus == [{"index": 0, "name": "NVIDIA H100 h0", "pci_bus_id": "bus-h0"},
                    {"index": 1, "name": "NVIDIA H100 h1", "pci_bus_id": "bus-h1"}]
    with mock.patch.object(pynvml, "nvmlInit", side_effect=pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)):
        assert node_gpus() == []


def test_two_gloo_ranks_train_disjoint_shards_in_step(tiny_data, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    done = subprocess.run([*torchrun_command(2, [])[:5], str(Path(__file__)), str(tmp_path), str(tiny_data)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    shards = [set(r["shard"]) for r in ranks]
    assert shards[0] and not shards[0] & shards[1]  # disjoint shards of one epoch order
    assert len(shards[0]) == len(ranks[0]["shard"]) == len(ranks[1]["shard"])
    for key in ("grad_sums", "params_after"):  # DDP averaged the gradients, so the steps agreed
        np.testing.assert_allclose(ranks[0][key], ranks[1][key], rtol=1e-5, atol=1e-7)
    assert ranks[0]["local_grad_sums"] != ranks[1]["local_grad_sums"]  # ... though their data differed
    expected = {"correct": ranks[0]["correct"] + ranks[1]["correct"], "total": 16.0}
    assert ranks[0]["reduced"] == ranks[1]["reduced"] == expected
    assert sorted(p.name for p in tmp_path.glob("report*")) == ["report-rank0.md"]


def _ddp_worker(out: Path, data_root: str) -> None:
    """One rank of the 2-process test (run by torchrun, see the module docstring)."""
    from torch.utils.data import DataLoader

    from bench.distributed import init, shutdown, world_size, wrap
    from loaders.dataset import discover_ids
    from loaders.split import make_split
    from loaders.torch_loader import FusionDataset
    from models import build_model

    torch.set_num_threads(1)
    env = read_env()
    device = init(env, "cpu")
    train_ids = make_split(discover_ids(data_root), seed=42)["train"]
    dataset = FusionDataset(data_root, train_ids)
    sampler = ShardSampler(len(train_ids), seed=42, rank=env.rank, world=env.world_size)
    order = sampler.order(0).tolist()
    loader = DataLoader(dataset, batch_size=4, sampler=sampler, drop_last=True, num_workers=0)
    torch.manual_seed(env.rank)  # different weights per rank: DDP must start them from rank 0's
    model = build_model("add")
    local_model = build_model("add")
    ddp = wrap(model, device)
    local_model.load_state_dict(model.state_dict())
    optimizer = torch.optim.Adam(ddp.parameters(), lr=1e-4)
    criterion = torch.nn.CrossEntropyLoss()
    record = {"world_size": world_size(), "shard": order}
    for step, (rgb, lidar, label) in enumerate(loader):
        local_model.load_state_dict(model.state_dict())  # this rank's own gradient, for contrast
        local_model.zero_grad()
        criterion(local_model(rgb, lidar), label).backward()
        optimizer.zero_grad()
        criterion(ddp(rgb, lidar), label).backward()
        optimizer.step()
        if step == 1:
            break
    record["grad_sums"] = [p.grad.double().sum().item() for p in model.parameters()]
    record["local_grad_sums"] = [p.grad.double().sum().item() for p in local_model.parameters()]
    record["params_after"] = [p.detach().double().sum().item() for p in model.parameters()]
    with torch.no_grad():
        record["correct"] = (model(rgb, lidar).argmax(1) == label).sum().item()
    record["reduced"] = reduce_sums({"correct": record["correct"], "total": 2 * len(label)}, device)
    (out / f"rank{env.rank}.json").write_text(json.dumps(record))
    if is_rank0():
        (out / f"report-rank{env.rank}.md").write_text("one report per job\n")
    shutdown()


if __name__ == "__main__":
    _ddp_worker(Path(sys.argv[1]), sys.argv[2])

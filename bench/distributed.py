"""Data-parallel training on several GPUs (or nodes) with torchrun and DistributedDataParallel.

torchrun starts one process per GPU and tells each who it is through the environment (RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT). Every rank builds the same model from the same seed
(DDP also broadcasts rank 0's weights when it wraps the model), walks the same shared epoch order
(loaders.order) and trains on its own contiguous slice of it, the slice DALI's readers take for
shard_id/num_shards; DDP averages the gradients in backward, so the ranks stay identical. Counts
and sums (correct, samples, loss) are summed over ranks; only rank 0 writes files.

Without torchrun (WORLD_SIZE unset or 1) every function here is a no-op, so the single-GPU path
is unchanged.
"""

import math
import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from bench.errors import UsageError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def read_env(environ=os.environ) -> DistEnv:
    """This process's place in a torchrun job; DistEnv() when not started by torchrun."""
    try:
        env = DistEnv(*(int(environ.get(name, default)) for name, default in
                        (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1))))
    except ValueError:
        raise UsageError("torchrun environment RANK, LOCAL_RANK and WORLD_SIZE must be integers, got "
                         + ", ".join(f"{k}={environ.get(k)!r}" for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))) from None
    if env.world_size < 1 or not 0 <= env.rank < env.world_size or env.local_rank < 0:
        raise UsageError(f"torchrun environment RANK={env.rank} LOCAL_RANK={env.local_rank} "
                         f"WORLD_SIZE={env.world_size}: expected 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0")
    return env


def init(env: DistEnv, device_type: str) -> torch.device:
    """Joins the process group (nccl on CUDA, gloo on CPU) and returns this rank's device:
    cuda:LOCAL_RANK, made current, or the CPU."""
    if device_type == "cuda":
        if env.local_rank >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK {env.local_rank} but this node has {torch.cuda.device_count()} "
                             "CUDA devices (--nproc-per-node larger than the GPU count?)")
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if env.enabled and not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", rank=env.rank, world_size=env.world_size, device_id=device)
        else:
            dist.init_process_group("gloo", rank=env.rank, world_size=env.world_size)
    return device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_rank0() -> bool:
    """Whether this process writes the run directory (always, without a process group)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model in DistributedDataParallel when there are several ranks, else as it is.
    Evaluate with the unwrapped module (`.module`): eval needs no gradient sync."""
    if world_size() == 1:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def min_over_ranks(value: int, device: torch.device) -> int:
    """The smallest value over ranks: the step count every rank can run (a rank with one step
    more would wait forever in DDP's all-reduce)."""
    if world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())


def reduce_sums(values: dict, device: torch.device) -> dict:
    """Each value summed over ranks (one all-reduce of a float64 vector); floats back."""
    names = list(values)
    vector = torch.tensor([float(values[k]) for k in names], dtype=torch.float64, device=device)
    if world_size() > 1:
        dist.all_reduce(vector, op=dist.ReduceOp.SUM)
    return dict(zip(names, vector.tolist()))


def global_samples_per_s(samples: int, seconds: float, device: torch.device) -> float:
    """Job throughput: samples of all ranks over the slowest rank's time."""
    vector = torch.tensor([float(samples), float(seconds)], dtype=torch.float64, device=device)
    if world_size() > 1:
        total = vector[:1].clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        slowest = vector[1:].clone()
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        vector = torch.cat([total, slowest])
    samples, seconds = vector.tolist()
    return samples / seconds if seconds > 0 else math.nan


def broadcast_from_rank0(obj):
    """Rank 0's value of a picklable object on every rank (decisions such as --resume's skip list
    must be the same everywhere, and only rank 0 may have the run directory)."""
    if world_size() == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def scaling_efficiency(samples_per_s_n: float, samples_per_s_1: float, n: int) -> float:
    """Throughput on n GPUs over n times the one-GPU throughput (1.0 = perfect scaling)."""
    if n < 1 or not samples_per_s_1 > 0:
        return math.nan
    return samples_per_s_n / (n * samples_per_s_1)


def node_gpus() -> list[dict]:
    """Every GPU NVML sees on this node (index, name, PCI bus id), whatever CUDA_VISIBLE_DEVICES
    hides from torch; local rank 0 samples them all. Empty when NVML is unavailable."""
    import pynvml
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            gpus.append({"index": index, "name": _text(pynvml.nvmlDeviceGetName(handle)),
                         "pci_bus_id": _text(pynvml.nvmlDeviceGetPciInfo(handle).busId)})
        return gpus
    finally:
        pynvml.nvmlShutdown()


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """The single-node torchrun command that runs `python -m bench ARGV` on nproc GPUs
    (--nproc N removed from ARGV, so the children do not launch again)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "bench", *kept]


def launch(nproc: int, argv: list[str]) -> int:
    """Runs the torchrun job for --nproc N and returns its exit status."""
    return subprocess.run(torchrun_command(nproc, argv)).returncode

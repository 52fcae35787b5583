"""What a run is asked to do (RunConfig, frozen) apart from the live objects it uses (RunContext)."""

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class RunConfig:
    """Settings that shape the results; parsed once from the command line, never mutated."""
    data_root: str
    train_ids: list[str]
    val_ids: list[str]
    device: torch.device
    epochs: int = 20
    lr: float = 1e-4
    seed: int = 42
    warmup_steps: int = 5
    target_acc: float = 99.0
    repeats: int = 1
    infer_batch_sizes: tuple[int, ...] = ()
    infer_iters: int = 20
    workers: int = 2
    progress: bool = True
    reference_steps: int = 20  # timed steps of the plain reference loop per variant (0: skip it)
    kernels: str | None = None  # a kernels.csv of `bench kernels` (or its folder): kernels.select.use_kernel
    robustness: bool = False  # evaluate each trained model under bench.worker.robustness.CONDITIONS
    energy_window_s: float = 0.0  # the last epochs back to back for the headline energy (0: none; nvml.energy_window_s)
    world_size: int = 1  # torchrun processes training each variant data-parallel
    rank: int = 0  # this process's rank among them


@dataclass
class RunContext:
    """State shared by the variants of one run: the NVML sampler, decoded splits and the
    reference loop's samples/s per model setting. A worker gets a copy without the sampler, and
    `decoded_dir` where the parent saved the decoded splits for it to map (loaders.resident)."""
    sampler: object = None  # bench.instruments.nvml.NvmlSampler while NVML works, else None
    nvml_reason: str = ""  # why NVML columns are empty
    idle_power_w: float | None = None
    loader_cache: dict = field(default_factory=dict)
    reference_cache: dict = field(default_factory=dict)
    decoded_dir: str | None = None

"""Trainer: the model, optimiser and settings of one variant; step() is the unit that gets timed."""

from contextlib import nullcontext

import torch

from bench import distributed
from bench.config import RunConfig
from bench.worker.step_capture import capturable_adam, fallback_reason, make_step
from bench.variants import Variant
from kernels.select import use_kernel
from models import build_model, fuse_relu_maxpool
from models.fusion import CHANNELS, aligned_width

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def memory_format(variant: Variant) -> torch.memory_format:
    return torch.channels_last if variant.memory_format == "channels_last" else torch.contiguous_format


def autocast(variant: Variant, device: torch.device):
    """The variant's autocast context (none for fp32)."""
    if variant.precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[variant.precision])


def adam(params, lr: float, device: torch.device) -> tuple[torch.optim.Adam, str]:
    """Adam as a user would tune it: the fused kernel on CUDA (one launch for all parameters),
    PyTorch's default elsewhere; returns the optimiser and the implementation's name for the row."""
    if device.type == "cuda":
        return torch.optim.Adam(params, lr=lr, fused=True), "adam-fused"
    return torch.optim.Adam(params, lr=lr, foreach=False), "adam-forloop"


def pooled_widths(downsample: str, channels: str) -> tuple[int, ...]:
    """The channel widths the network's ReLU + 2x2 max-pool pairs see, first block first (at 64,
    32 and 16 pixels a side); none with strided downsampling, which has no max-pool."""
    if downsample != "maxpool":
        return ()
    return CHANNELS if channels == "seed" else tuple(aligned_width(width) for width in CHANNELS)


def fuse_kernels(model: torch.nn.Module, variant: Variant, device: torch.device, results) -> list[str]:
    """Fuses into `model` the Triton kernels that `results` (a kernels.csv, or None) shows winning
    for this variant's precision, memory format and widths on this GPU; returns their names for
    the row. The Trainer and the plain reference loop both build their network with it."""
    widths = pooled_widths(variant.downsample, variant.channels)
    if widths and use_kernel("relu_maxpool", device, results, dtype=variant.precision, layout=variant.memory_format,
                             channels=widths):
        fuse_relu_maxpool(model)
        return ["relu_maxpool"]
    return []


class Trainer:
    """Model, optimiser and the settings of one variant; step() is the unit that gets timed."""

    def __init__(self, variant: Variant, cfg: RunConfig):
        self.variant, self.device = variant, cfg.device
        torch.manual_seed(cfg.seed)
        self.memory_format = memory_format(variant)
        self.model = build_model(variant.arch, variant.downsample, channels=variant.channels)
        self.model.to(self.device, memory_format=self.memory_format)
        self.kernels = fuse_kernels(self.model, variant, self.device, cfg.kernels)  # the Triton kernels, for the row
        self.whole_step = variant.compile_mode == "step"
        if self.whole_step and cfg.world_size > 1:
            raise ValueError("--compile-mode step captures one process's step; under torchrun DDP's all-reduce "
                             "would run inside the captured graph: use --compile-mode default or reduce-overhead")
        # step: no cudagraph trees inside the whole-step graph, so the model compiles in mode default
        mode = "default" if self.whole_step else variant.compile_mode
        self.forward = torch.compile(self.model, mode=mode) if variant.compiled else self.model
        # evaluation never goes through DDP: its forward broadcasts buffers, a collective every rank
        # would have to join, and evaluation needs no gradient sync
        self.eval_forward, self.world_size = self.forward, cfg.world_size
        if cfg.world_size > 1:  # DDP first, then torch.compile of the wrapped model
            ddp = distributed.wrap(self.model, self.device)
            self.forward = torch.compile(ddp, mode=mode) if variant.compiled else ddp
        self.cudagraphs = variant.compile_mode in ("reduce-overhead", "max-autotune") and self.device.type == "cuda"
        if self.whole_step:
            self.optimizer = capturable_adam(self.model.parameters(), cfg.lr, self.device)
            self.optimizer_name = "adam-fused-capturable"
        else:
            self.optimizer, self.optimizer_name = adam(self.model.parameters(), cfg.lr, self.device)
        self.note = (fallback_reason(self.device) or "") if self.whole_step else ""  # why the step is not captured
        self.captured = None  # step: made on the first batch (bench.worker.step_capture.make_step)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cfg.epochs)
        # GradScaler only where fp16 needs it: a disabled scaler still costs calls every step
        self.scaler = torch.amp.GradScaler(self.device.type) if variant.precision == "fp16" else None
        self.criterion = torch.nn.CrossEntropyLoss()

    def autocast(self):
        return autocast(self.variant, self.device)

    def inputs(self, rgb, lidar):
        return (rgb.contiguous(memory_format=self.memory_format), lidar.contiguous(memory_format=self.memory_format))

    def logits(self, rgb, lidar):
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        forward = self.forward if self.model.training else self.eval_forward
        with self.autocast():
            return forward(*self.inputs(rgb, lidar))

    def step(self, rgb, lidar, label) -> torch.Tensor:
        """One optimiser step; returns the loss on the device (detached, no copy: it is computed
        outside the compiled model, so a CUDA-graph replay cannot overwrite it)."""
        if self.whole_step:
            return self.replay_step(rgb, lidar, label)
        loss = self.criterion(self.logits(rgb, lidar).float(), label)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return loss.detach()

    def replay_step(self, rgb, lidar, label) -> torch.Tensor:
        """--compile-mode step: the first batch captures the whole step (inside the warm-up steps,
        so in compile_s), every batch replays it; eager where it cannot be captured (self.note)."""
        batch = (*self.inputs(rgb, lidar), label)
        if self.captured is None:
            self.captured = make_step(self.model, self.optimizer, self.criterion, batch, forward=self.forward,
                                      amp_dtype=AMP_DTYPES.get(self.variant.precision))
        return self.captured(*batch)

    @torch.no_grad()
    def evaluate(self, loader) -> tuple[float, float]:
        """(val_loss as the mean of batch losses, accuracy %), as the seed computed them; over
        every rank's shard under torchrun."""
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        batches = total = 0
        for rgb, lidar, label in loader:
            logits = self.logits(rgb, lidar).float()
            loss_sum += self.criterion(logits, label)
            correct += (logits.argmax(dim=1) == label).sum()
            batches, total = batches + 1, total + len(label)
        self.model.train()
        if self.world_size > 1:
            sums = distributed.reduce_sums({"loss": loss_sum, "correct": correct, "batches": batches, "total": total},
                                           self.device)
            return sums["loss"] / sums["batches"], 100.0 * sums["correct"] / sums["total"]
        return loss_sum.item() / batches, 100.0 * correct.item() / total

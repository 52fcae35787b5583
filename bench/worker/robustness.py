"""Test-time sensor degradations and the evaluation of a trained network under each of them.

The seed study claimed late fusion copes better when one sensor fails; this measures it. Every
degradation is applied here, to a batch already on the device, after the loader: so it is the
same for every loader (they yield identical tensors) and for every network.

Conditions and what their level means:

- clean: nothing changed (the reference accuracy).
- rgb_missing: the RGBA image is all zeros (camera dead; alpha included).
- lidar_missing: every point is a no-return, exactly what depth_to_xyza makes of a depth map of
  NO_RETURN_DEPTH (50) everywhere: XYZ = 50 x the beam direction, A = 0.
- rgb_noise, level sigma: Gaussian noise N(0, sigma) added to the colour channels R, G, B, in the
  image's [0, 1] units (sigma 0.05, 0.1, 0.2 = 13, 26, 51 of 255 grey levels); alpha is a mask,
  not a measurement, and stays; no clamping.
- lidar_noise, level sigma: Gaussian range noise N(0, sigma) metres along each beam of the points
  that returned (the generator's own range noise is 0.02 m); a point pushed to >= 50 m becomes a
  no-return, one pushed below 0 sits at 0.
- lidar_dropout, level p: each point independently becomes a no-return with probability p.

The LiDAR degradations edit depth and rebuild XYZA with the reader's rule. The beam direction of
a pixel is read back from its own XYZ (|XYZ| is the depth, so XYZ / |XYZ| is the unit ray), so no
angle table is needed; a pixel of depth exactly 0 has no direction and stays at the origin.

Randomness comes from one torch.Generator on the batch's device: the same seed, loader order and
batch size give the same degraded batches on every run and for every network.
"""

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from loaders.dataset import NO_RETURN_DEPTH

NOISE_SIGMAS = (0.05, 0.1, 0.2)  # rgb: [0, 1] intensity units; lidar: metres of range
DROPOUT_SHARES = (0.1, 0.5, 0.9)


@dataclass(frozen=True)
class Condition:
    name: str
    level: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.name} {self.level:g}" if self.level else self.name


CONDITIONS = (
    Condition("clean"),
    Condition("rgb_missing"),
    Condition("lidar_missing"),
    *(Condition("rgb_noise", sigma) for sigma in NOISE_SIGMAS),
    *(Condition("lidar_noise", sigma) for sigma in NOISE_SIGMAS),
    *(Condition("lidar_dropout", share) for share in DROPOUT_SHARES),
)
NAMES = tuple(dict.fromkeys(c.name for c in CONDITIONS))


def _rebuild_lidar(lidar: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """XYZA [B, 4, H, W] for a new depth [B, H, W] along the same beams, as depth_to_xyza builds it."""
    old_depth = lidar[:, :3].norm(dim=1, keepdim=True)
    direction = torch.where(old_depth > 0, lidar[:, :3] / old_depth.clamp_min(torch.finfo(lidar.dtype).tiny), 0)
    depth = depth.unsqueeze(1)
    return torch.cat([direction * depth, (depth < NO_RETURN_DEPTH).to(lidar.dtype)], dim=1)


def _random(shape, like: torch.Tensor, generator: torch.Generator, normal: bool) -> torch.Tensor:
    draw = torch.randn if normal else torch.rand
    return draw(shape, generator=generator, device=like.device, dtype=like.dtype)


def degrade(rgb: torch.Tensor, lidar: torch.Tensor, condition: Condition,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(rgb, lidar) of a [B, 4, H, W] batch under `condition`; inputs are never modified."""
    name, level = condition.name, condition.level
    if name == "clean":
        return rgb, lidar
    if name == "rgb_missing":
        return torch.zeros_like(rgb), lidar
    if name == "rgb_noise":
        noise = _random(rgb[:, :3].shape, rgb, generator, normal=True) * level
        return torch.cat([rgb[:, :3] + noise, rgb[:, 3:]], dim=1), lidar
    returned = lidar[:, 3] > 0.5
    depth = torch.where(returned, lidar[:, :3].norm(dim=1), NO_RETURN_DEPTH)
    if name == "lidar_missing":
        depth = torch.full_like(depth, NO_RETURN_DEPTH)
    elif name == "lidar_noise":
        noisy = depth + _random(depth.shape, depth, generator, normal=True) * level
        depth = torch.where(returned, noisy.clamp(0, NO_RETURN_DEPTH), depth)
    elif name == "lidar_dropout":
        dropped = _random(depth.shape, depth, generator, normal=False) < level
        depth = torch.where(dropped, NO_RETURN_DEPTH, depth)
    else:
        raise ValueError(f"unknown robustness condition {name!r} (expected one of {', '.join(NAMES)})")
    return rgb, _rebuild_lidar(lidar, depth)


@torch.no_grad()
def evaluate_robustness(model_fn, loader, conditions=CONDITIONS, device=None, autocast=nullcontext,
                        seed: int = 0) -> list[dict]:
    """One row {condition, level, accuracy, val_loss, samples} per condition, from one pass over
    `loader`: each batch is read once and degraded once per condition.

    model_fn(rgb, lidar) -> logits, with the model already in eval mode (e.g. Trainer.logits);
    autocast() gives the context to run it in. val_loss is the mean of batch losses and accuracy a
    percentage, as the seed computed them. Each condition has its own generator seeded with `seed`,
    so its degradation does not depend on which other conditions are evaluated.
    """
    criterion = torch.nn.CrossEntropyLoss()
    tallies, generators = {}, {}
    for condition in conditions:
        if condition.name not in NAMES:
            raise ValueError(f"unknown robustness condition {condition.name!r} (expected one of {', '.join(NAMES)})")
        tallies[condition] = {"loss": 0.0, "correct": 0, "batches": 0, "samples": 0}
    for rgb, lidar, label in loader:
        batch_device = device or rgb.device
        for condition in conditions:
            if condition not in generators:
                generators[condition] = torch.Generator(device=batch_device).manual_seed(seed)
            degraded_rgb, degraded_lidar = degrade(rgb, lidar, condition, generators[condition])
            with autocast():
                logits = model_fn(degraded_rgb, degraded_lidar).float()
            tally = tallies[condition]
            tally["loss"] += criterion(logits, label)
            tally["correct"] += (logits.argmax(dim=1) == label).sum()
            tally["batches"] += 1
            tally["samples"] += len(label)
    rows = []
    for condition, tally in tallies.items():
        if tally["batches"] == 0:
            raise ValueError("evaluate_robustness: the loader yielded no batches")
        rows.append({"condition": condition.name, "level": condition.level,
                     "accuracy": 100.0 * float(tally["correct"]) / tally["samples"],
                     "val_loss": float(tally["loss"]) / tally["batches"], "samples": tally["samples"]})
    return rows

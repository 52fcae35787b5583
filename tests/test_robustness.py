"""The test-time degradations do what their names say, deterministically; evaluation and report."""

import math

import pandas as pd
import pytest
import torch

from bench.worker.robustness import CONDITIONS, DROPOUT_SHARES, NOISE_SIGMAS, Condition, degrade, evaluate_robustness
from loaders import make_loader
from loaders.dataset import NO_RETURN_DEPTH, depth_to_xyza, discover_ids
from loaders.split import make_split
from reports.results import append_rows
from reports.robustness_report import ROBUSTNESS, ROBUSTNESS_COLUMNS, robustness_section, write_robustness_plot

H = W = 16


def _batch(batch: int = 8, seed: int = 0):
    """A batch like the loaders': RGBA in [0, 1] with a binary alpha, XYZA from a depth map with
    returns (3-20 m) and no-returns (50 m), per-sample angle tables."""
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(batch, 4, H, W, generator=g)
    rgb[:, 3] = (rgb[:, 3] > 0.5).float()
    depth = torch.rand(batch, H, W, generator=g) * 17 + 3
    depth[torch.rand(batch, H, W, generator=g) < 0.3] = NO_RETURN_DEPTH
    azimuth = torch.linspace(-0.3, 0.3, H).expand(batch, H)
    zenith = torch.linspace(-0.3, 0.3, W).expand(batch, W)
    return rgb, depth_to_xyza(depth, azimuth, zenith), depth, azimuth, zenith


def _run(condition, seed=1):
    rgb, lidar, *_ = _batch()
    return degrade(rgb, lidar, condition, torch.Generator().manual_seed(seed))


def test_clean_and_rgb_missing():
    rgb, lidar, *_ = _batch()
    assert degrade(rgb, lidar, Condition("clean"))[0] is rgb
    out_rgb, out_lidar = degrade(rgb, lidar, Condition("rgb_missing"))
    assert torch.count_nonzero(out_rgb) == 0 and out_rgb.shape == rgb.shape
    assert torch.equal(out_lidar, lidar)


def test_lidar_missing_equals_a_no_return_depth_map():
    rgb, lidar, depth, azimuth, zenith = _batch()
    out_rgb, out_lidar = degrade(rgb, lidar, Condition("lidar_missing"))
    expected = depth_to_xyza(torch.full_like(depth, NO_RETURN_DEPTH), azimuth, zenith)
    torch.testing.assert_close(out_lidar, expected, rtol=1e-5, atol=1e-4)
    assert torch.count_nonzero(out_lidar[:, 3]) == 0
    assert torch.equal(out_rgb, rgb)


def test_rgb_noise_statistics_leave_alpha():
    rgb, lidar, *_ = _batch()
    for sigma in NOISE_SIGMAS:
        out_rgb, out_lidar = degrade(rgb, lidar, Condition("rgb_noise", sigma), torch.Generator().manual_seed(3))
        noise = out_rgb[:, :3] - rgb[:, :3]
        assert abs(noise.mean().item()) < 0.1 * sigma
        assert noise.std().item() == pytest.approx(sigma, rel=0.05)
        assert torch.equal(out_rgb[:, 3], rgb[:, 3]) and torch.equal(out_lidar, lidar)


def test_lidar_noise_moves_returns_along_their_beams():
    rgb, lidar, depth, azimuth, zenith = _batch()
    sigma = 0.2
    _, out = degrade(rgb, lidar, Condition("lidar_noise", sigma), torch.Generator().manual_seed(3))
    returned = depth < NO_RETURN_DEPTH
    new_depth = out[:, :3].norm(dim=1)
    assert (new_depth - depth)[returned].std().item() == pytest.approx(sigma, rel=0.05)
    no_return = (~returned).unsqueeze(1).expand_as(out)
    torch.testing.assert_close(out[no_return], lidar[no_return], rtol=1e-5, atol=1e-4)
    # every return is still XYZA of its noisy depth on its original beam
    noisy_depth = torch.where(returned, new_depth, NO_RETURN_DEPTH)
    torch.testing.assert_close(out, depth_to_xyza(noisy_depth, azimuth, zenith), rtol=1e-5, atol=1e-4)


def test_lidar_dropout_share_and_no_return():
    rgb, lidar, depth, azimuth, zenith = _batch(batch=32)
    returned = depth < NO_RETURN_DEPTH
    for share in DROPOUT_SHARES:
        _, out = degrade(rgb, lidar, Condition("lidar_dropout", share), torch.Generator().manual_seed(5))
        dropped = returned & (out[:, 3] == 0)
        assert dropped.sum().item() / returned.sum().item() == pytest.approx(share, abs=0.03)
        kept_depth = torch.where(dropped, NO_RETURN_DEPTH, depth)
        torch.testing.assert_close(out, depth_to_xyza(kept_depth, azimuth, zenith), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("condition", CONDITIONS, ids=lambda c: c.label)
def test_deterministic_given_seed_and_inputs_untouched(condition):
    rgb, lidar, *_ = _batch()
    before = rgb.clone(), lidar.clone()
    first = degrade(rgb, lidar, condition, torch.Generator().manual_seed(9))
    second = degrade(rgb, lidar, condition, torch.Generator().manual_seed(9))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert all(t.dtype == torch.float32 and t.shape == (8, 4, H, W) for t in first)
    assert torch.equal(rgb, before[0]) and torch.equal(lidar, before[1])
    if condition.name.endswith(("noise", "dropout")):
        other = degrade(rgb, lidar, condition, torch.Generator().manual_seed(10))
        assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_unknown_condition_is_a_clear_error():
    rgb, lidar, *_ = _batch()
    with pytest.raises(ValueError, match="unknown robustness condition 'fog'"):
        degrade(rgb, lidar, Condition("fog", 0.1))


def _val_loader(tiny_data):
    split = make_split(discover_ids(tiny_data), seed=42)
    return make_loader("resident", tiny_data, split["val"], batch_size=16, shuffle=False, drop_last=False)


class TinyFusion(torch.nn.Module):
    """A few hundred parameters: the rows, not the network, are under test (the real networks
    cost seconds per pass on a shared CPU)."""

    def __init__(self):
        super().__init__()
        self.rgb, self.lidar = torch.nn.Conv2d(4, 4, 3, stride=4), torch.nn.Conv2d(4, 4, 3, stride=4)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, rgb, lidar):
        features = torch.cat([self.rgb(rgb).mean((2, 3)), self.lidar(lidar / NO_RETURN_DEPTH).mean((2, 3))], dim=1)
        return self.head(features)


def test_evaluate_robustness_one_row_per_condition(tiny_data):
    torch.manual_seed(0)
    model = TinyFusion().eval()
    loader = _val_loader(tiny_data)
    rows = evaluate_robustness(model, loader, CONDITIONS, torch.device("cpu"), seed=0)
    assert [(r["condition"], r["level"]) for r in rows] == [(c.name, c.level) for c in CONDITIONS]
    assert all(r["samples"] == loader.num_samples for r in rows)
    assert all(0 <= r["accuracy"] <= 100 and math.isfinite(r["val_loss"]) for r in rows)
    clean = rows[0]
    logits = torch.cat([model(rgb, lidar) for rgb, lidar, _ in loader])
    labels = torch.cat([label for *_, label in loader])
    assert clean["accuracy"] == pytest.approx(100 * (logits.argmax(1) == labels).float().mean().item())
    by_name = {(r["condition"], r["level"]): r for r in rows}
    assert by_name[("rgb_missing", 0.0)]["val_loss"] != pytest.approx(clean["val_loss"])
    again = evaluate_robustness(model, loader, CONDITIONS, torch.device("cpu"), seed=0)
    assert again == rows


def test_robustness_report_and_plot(tmp_path):
    rows = []
    for variant, drop in (("late_fp32", 5.0), ("add_fp32", 30.0)):
        for seed in (42, 43, 44):
            for condition in CONDITIONS:
                accuracy = 99.0 - (drop if condition.name == "lidar_missing" else 0.0) - 0.1 * (seed - 42)
                rows.append({"variant": variant, "seed": seed, "condition": condition.name, "level": condition.level,
                             "accuracy": accuracy, "val_loss": 0.1, "samples": 96})
    append_rows(tmp_path / ROBUSTNESS, rows, ROBUSTNESS_COLUMNS)
    table = pd.read_csv(tmp_path / ROBUSTNESS)
    section = robustness_section(table)
    assert "| variant" in section and "clean" in section and "lidar_missing" in section
    assert "lidar_missing: late_fp32" in section  # the most robust network to a missing LiDAR
    assert "93.90" in section and "68.90" in section  # lidar_missing means over seeds: 99 - drop - 0.1
    plot = write_robustness_plot(table, tmp_path / "plots")
    assert plot.exists() and plot.stat().st_size > 0

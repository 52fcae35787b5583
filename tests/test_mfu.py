"""FLOP counting on tiny nets with known answers, peak lookup and MFU arithmetic."""

import pytest
import torch
from torch import nn

from bench.instruments.mfu import forward_flops_per_sample, mfu, peak_flops, train_flops_per_sample

BATCH, CHANNELS, SIDE = 3, 2, 4
IN = 2 * CHANNELS * SIDE * SIDE  # both modalities, flattened and concatenated


class TwoLinear(nn.Module):
    """Takes (rgb, lidar) like the fusion nets; Linear(IN, hidden) -> Linear(hidden, 2)."""

    def __init__(self, hidden):
        super().__init__()
        self.first = nn.Linear(IN, hidden)
        self.second = nn.Linear(hidden, 2)

    def forward(self, rgb, lidar):
        x = torch.cat([rgb.flatten(1), lidar.flatten(1)], dim=1)
        return self.second(torch.relu(self.first(x)))


class OneLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(IN, 2)

    def forward(self, rgb, lidar):
        return self.fc(torch.cat([rgb.flatten(1), lidar.flatten(1)], dim=1))


def inputs():
    return torch.rand(BATCH, CHANNELS, SIDE, SIDE), torch.rand(BATCH, CHANNELS, SIDE, SIDE)


def test_single_linear_counts_are_exact():
    forward = 2 * IN * 2
    assert forward_flops_per_sample(OneLinear(), *inputs()) == forward
    # The inputs need no gradient, so backward is the weight gradient alone: one more matmul.
    assert train_flops_per_sample(OneLinear(), *inputs()) == 2 * forward


def test_two_layer_training_is_about_three_times_forward():
    hidden = 8
    forward = 2 * IN * hidden + 2 * hidden * 2
    model = TwoLinear(hidden)
    assert forward_flops_per_sample(model, *inputs()) == forward
    # Backward: weight grads of both layers plus the input grad of the second layer only.
    assert train_flops_per_sample(model, *inputs()) == 3 * forward - 2 * IN * hidden


def test_counting_leaves_parameters_and_grads_alone():
    model = TwoLinear(8)
    model.first.weight.grad = torch.ones_like(model.first.weight)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    train_flops_per_sample(model, *inputs())
    forward_flops_per_sample(model, *inputs())
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
    assert torch.equal(model.first.weight.grad, torch.ones_like(model.first.weight))
    assert model.second.weight.grad is None and model.first.bias.grad is None


def test_peak_flops_known_gpus():
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989e12)
    assert peak_flops("NVIDIA H100 PCIe", "fp32") == pytest.approx(51e12)
    assert peak_flops("NVIDIA A100-SXM4-80GB", "fp16") == pytest.approx(312e12)
    assert peak_flops("NVIDIA A10", "fp32") == pytest.approx(31.2e12)
    assert peak_flops("NVIDIA L4", "bf16") == pytest.approx(121e12)
    assert peak_flops("NVIDIA L40S", "bf16") == pytest.approx(362e12)
    assert peak_flops("NVIDIA GeForce RTX 3090", "fp32") == pytest.approx(35.6e12)
    assert peak_flops("NVIDIA H100 80GB HBM3", "tf32") == pytest.approx(494.5e12)  # half of bf16


def test_fp32_variants_are_held_to_the_tf32_peak_while_cudnn_may_use_it(monkeypatch):
    from bench.worker.runner import _peak_precision
    from bench.variants import Variant
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert _peak_precision(Variant("add")) == "tf32"
    assert _peak_precision(Variant("add", precision="bf16")) == "bf16"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert _peak_precision(Variant("add")) == "fp32"


def test_peak_flops_unknown_gpu_or_cpu():
    assert peak_flops("", "fp32") is None
    assert peak_flops("NVIDIA A10G", "fp32") is None  # not the A10, not in the table
    assert peak_flops("NVIDIA GH200 480GB", "bf16") is None  # not an H200
    with pytest.raises(ValueError):
        peak_flops("NVIDIA H100 80GB HBM3", "int8")


def test_mfu_arithmetic():
    # 1.2 GFLOP/sample at 100k samples/s on an H100 in bf16: 1.2e14 / 9.89e14.
    assert mfu(1.2e9, 1e5, "NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(1.2e14 / 989e12)
    assert mfu(1.2e9, 1e5, "", "fp32") is None

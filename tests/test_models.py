import pytest
import torch

from models import ARCHITECTURES, DOWNSAMPLES, Embedder, build_model, count_parameters

SEED_PARAMS = {"late": 13_694_510, "concat": 13_627_934, "add": 7_074_334, "mul": 7_074_334}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_parameter_counts_match_the_seed_table(arch):
    assert count_parameters(build_model(arch, "maxpool")) == SEED_PARAMS[arch]


@pytest.mark.parametrize("downsample", DOWNSAMPLES)
def test_embedder_maps_64x64_to_200x8x8(downsample):
    assert Embedder(4, downsample)(torch.zeros(3, 4, 64, 64)).shape == (3, 200, 8, 8)


@pytest.mark.parametrize("downsample", DOWNSAMPLES)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_forward_gives_two_logits_per_sample(arch, downsample):
    model = build_model(arch, downsample)
    assert model(torch.rand(5, 4, 64, 64), torch.rand(5, 4, 64, 64)).shape == (5, 2)


def test_strided_downsampling_adds_three_convs_per_embedder():
    extra = sum(c * c * 9 + c for c in (50, 100, 200))
    assert count_parameters(build_model("add", "strided")) == SEED_PARAMS["add"] + 2 * extra


def test_fusion_operators_differ():
    torch.manual_seed(0)
    rgb, lidar = torch.rand(2, 4, 64, 64), torch.rand(2, 4, 64, 64)
    add, mul = build_model("add"), build_model("mul")
    mul.load_state_dict(add.state_dict())
    assert not torch.allclose(add(rgb, lidar), mul(rgb, lidar))


@pytest.mark.parametrize("bad", [("resnet", "maxpool"), ("add", "avgpool")])
def test_unknown_names_are_rejected(bad):
    with pytest.raises(ValueError, match="must be one of"):
        build_model(*bad)

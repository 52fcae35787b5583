import pytest
import torch

from models import ARCHITECTURES, DOWNSAMPLES, Embedder, build_model, count_parameters, count_stored_parameters

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


def _aligned_pair(arch, downsample):
    """A seed and an aligned network with the same weights: the aligned one is built from the
    same random draws (skip_init draws none) and holds them in the leading slices."""
    torch.manual_seed(0)
    seed = build_model(arch, downsample)
    torch.manual_seed(0)
    aligned = build_model(arch, downsample, channels="aligned")
    return seed, aligned


def _seed_slice(p, q):
    """The part of aligned parameter p that holds seed parameter q."""
    return p[tuple(slice(0, n) for n in q.shape)]


def _padding_masks(aligned, seed):
    """For each aligned parameter: True where the element is padding (outside the seed's slice)."""
    masks = {}
    for (name, p), q in zip(aligned.named_parameters(), seed.parameters()):
        mask = torch.ones_like(p, dtype=torch.bool)
        mask[tuple(slice(0, n) for n in q.shape)] = False
        masks[name] = mask
    return masks


@pytest.mark.parametrize("arch,downsample", [("add", "maxpool"), ("late", "strided")])
def test_aligned_network_stores_widths_padded_to_multiples_of_8(arch, downsample):
    seed, aligned = _aligned_pair(arch, downsample)
    widths = [m.out_channels for m in aligned.modules() if isinstance(m, torch.nn.Conv2d)]
    assert set(widths) == {56, 104, 200}
    assert count_parameters(aligned) == count_parameters(seed)
    assert count_stored_parameters(aligned) > count_stored_parameters(seed) == count_parameters(seed)
    for (name, p), mask in zip(aligned.named_parameters(), _padding_masks(aligned, seed).values()):
        assert torch.equal(p[mask], torch.zeros_like(p[mask])), name


@pytest.mark.parametrize("arch,downsample", [("add", "maxpool"), ("concat", "strided"), ("late", "maxpool")])
def test_aligned_network_computes_the_seed_function_and_gradients(arch, downsample):
    """fp32 on CPU: convolutions over 56 instead of 50 input channels add exact zeros but may
    sum in another order, so equality holds to rtol 1e-5 / atol 1e-6, not bit for bit."""
    seed, aligned = _aligned_pair(arch, downsample)
    rgb, lidar, label = torch.rand(3, 4, 64, 64), torch.rand(3, 4, 64, 64), torch.tensor([0, 1, 1])
    losses = []
    for model in (seed, aligned):
        logits = model(rgb, lidar)
        torch.nn.functional.cross_entropy(logits, label).backward()
        losses.append(logits)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    masks = _padding_masks(aligned, seed)
    for (name, p), q in zip(aligned.named_parameters(), seed.parameters()):
        torch.testing.assert_close(_seed_slice(p.grad, q), q.grad, rtol=1e-4, atol=1e-6)
        assert torch.count_nonzero(p.grad[masks[name]]) == 0, name


@pytest.mark.parametrize("fused", [False, True])
def test_padding_stays_exactly_zero_under_adam(fused):
    """Zero gradient on a zero weight: m = v = 0, so Adam's step is 0 / (sqrt(0) + eps) = 0."""
    seed, aligned = _aligned_pair("add", "maxpool")
    optimizer = torch.optim.Adam(aligned.parameters(), lr=1e-2, weight_decay=0, fused=fused)
    torch.manual_seed(1)
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(aligned(torch.rand(2, 4, 64, 64), torch.rand(2, 4, 64, 64)),
                                                 torch.tensor([0, 1]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    masks = _padding_masks(aligned, seed)
    moved = 0
    for name, p in aligned.named_parameters():
        assert torch.count_nonzero(p[masks[name]]) == 0, name
        moved += int(torch.count_nonzero(_seed_slice(p, seed.get_parameter(name)) != seed.get_parameter(name)))
    assert moved > 0  # the logical weights did train


def test_unknown_channel_layout_is_rejected():
    with pytest.raises(ValueError, match="channels must be one of"):
        build_model("add", "maxpool", channels="wide")

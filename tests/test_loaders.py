"""All loaders on the CPU: same tensors as the seed's FusionDataset, RGB/LiDAR/label never come
apart, every epoch a seeded permutation; plus DALI's sharding, prepared form and install message.

Pairing is checked sample by sample: each yielded RGB image and each yielded XYZA map is matched
against the reference tensors of every id (the fixture's random images and depth maps are unique),
and the two matches and the label must name the same sample.
"""

import importlib
import importlib.util
import sys

import numpy as np
import pytest
import torch

from loaders import make_loader
from loaders.dataset import DatasetError, discover_ids
from loaders.prepare import prepare_dataset
from loaders.torch_loader import FusionDataset
from conftest import write_dataset, write_sample

FORMS = [False, True]  # the `prepared` argument: png, prepared
# (loader, prepared): every loader and both DALI forms must agree with FusionDataset
KINDS = [("torch", None), ("resident", None), ("dali", False), ("dali", True)]


@pytest.fixture
def make(request):
    """make(root, ids, **options) for the loader named by the test's `kind` parameter."""
    kind, prepared = request.param
    if kind == "dali":
        pytest.importorskip("nvidia.dali")
        return lambda root, ids, **options: make_loader(kind, root, ids, prepared=prepared, **options)
    return lambda root, ids, **options: make_loader(kind, root, ids, workers=0, **options)


@pytest.fixture(scope="module")
def DaliLoader():
    pytest.importorskip("nvidia.dali")
    return importlib.import_module("loaders.dali_loader").DaliLoader


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """12 cubes + 12 spheres, prepared, and FusionDataset's tensors of every id as the reference."""
    root = write_dataset(tmp_path_factory.mktemp("dali") / "data", per_class=12)
    prepare_dataset(root, progress=False)
    ids = discover_ids(root)
    items = [FusionDataset(root, ids)[k] for k in range(len(ids))]
    rgb, lidar, label = (torch.stack([item[k] for item in items]) for k in range(3))
    return {"root": root, "ids": ids, "rgb": rgb, "lidar": lidar, "label": label}


def match(batch: torch.Tensor, reference: torch.Tensor) -> list[int]:
    """The index of the one reference tensor equal to each sample of the batch."""
    distance = (batch[:, None] - reference[None]).abs().flatten(2).amax(2)  # [B, N]
    hits = distance <= 1e-5 * (1 + reference.abs().flatten(1).amax(1))
    assert (hits.sum(1) == 1).all(), "a yielded sample matches no reference sample, or several"
    return hits.int().argmax(1).tolist()


def epoch_ids(loader, data) -> list[int]:
    """One epoch as reference indices, asserting RGB, LiDAR and label of every sample agree."""
    order = []
    for rgb, lidar, label in loader:
        assert rgb.dtype == lidar.dtype == torch.float32 and label.dtype == torch.int64
        assert rgb.shape[1:] == lidar.shape[1:] == (4, 64, 64)
        by_rgb, by_lidar = match(rgb, data["rgb"]), match(lidar, data["lidar"])
        assert by_rgb == by_lidar
        assert label.tolist() == data["label"][by_rgb].tolist()
        order += by_rgb
    return order


@pytest.mark.parametrize("make", KINDS, indirect=True)
def test_unshuffled_batches_equal_fusion_dataset_in_order(make, data):
    loader = make(data["root"], data["ids"], batch_size=5, shuffle=False, drop_last=False)
    batches = list(loader)
    assert len(batches) == len(loader) == 5 and loader.num_samples == 24
    rgb, lidar, label = (torch.cat([b[k] for b in batches]) for k in range(3))
    assert torch.equal(rgb, data["rgb"])
    torch.testing.assert_close(lidar, data["lidar"], rtol=1e-6, atol=1e-6)
    assert torch.equal(label, data["label"])


@pytest.mark.parametrize("make", KINDS, indirect=True)
@pytest.mark.parametrize("batch_size, drop_last", [(8, True), (5, True), (5, False)])
def test_shuffled_epochs_are_permutations_of_paired_samples(make, data, batch_size, drop_last):
    loader = make(data["root"], data["ids"], batch_size=batch_size, drop_last=drop_last)
    seen = [epoch_ids(loader, data) for _ in range(3)]
    for order in seen:
        assert len(order) == len(set(order)) == (len(loader) * batch_size if drop_last else 24)
    if not drop_last:
        assert all(sorted(order) == list(range(24)) for order in seen)
    assert len({tuple(order) for order in seen[:3]}) == 3


@pytest.mark.parametrize("make", KINDS, indirect=True)
def test_same_seed_same_orders_other_seed_other_orders(make, data):
    def orders(seed, batch_size=8):
        loader = make(data["root"], data["ids"], batch_size=batch_size, seed=seed)
        return [epoch_ids(loader, data) for _ in range(2)]

    first = orders(7)
    assert orders(7, batch_size=4) == first  # nor does the order depend on the batch size
    assert orders(8) != first


def test_dali_reports_the_form_it_read(DaliLoader, data):
    assert DaliLoader(data["root"], data["ids"], prepared=False).form == "png"
    assert DaliLoader(data["root"], data["ids"], prepared=True).form == "prepared"


@pytest.mark.parametrize("prepared", FORMS)
def test_shards_split_each_epoch_without_overlap(DaliLoader, data, prepared):
    shards = [DaliLoader(data["root"], data["ids"], batch_size=4, drop_last=False, prepared=prepared,
                         shard_id=k, num_shards=2) for k in range(2)]
    for _ in range(2):
        first, second = (epoch_ids(shard, data) for shard in shards)
        assert len(first) == len(second) == 12 and sorted(first + second) == list(range(24))


@pytest.mark.parametrize("prepared", FORMS)
def test_an_epoch_broken_off_early_does_not_leak_into_the_next(DaliLoader, data, prepared):
    loader = DaliLoader(data["root"], data["ids"], batch_size=4, drop_last=False, prepared=prepared)
    next(iter(loader))
    assert sorted(epoch_ids(loader, data)) == list(range(24))


def test_a_split_subset_reads_only_its_ids(DaliLoader, data):
    subset = data["ids"][3:20:2]
    for prepared in FORMS:
        loader = DaliLoader(data["root"], subset, batch_size=3, prepared=prepared)
        assert sorted(epoch_ids(loader, data)) == list(range(3, 20, 2))


@pytest.mark.parametrize("prepared", FORMS)
def test_fewer_samples_than_a_batch_give_no_batches_with_drop_last(DaliLoader, data, prepared):
    loader = DaliLoader(data["root"], data["ids"][:3], batch_size=8, prepared=prepared)
    assert len(loader) == 0 and list(loader) == [] and list(loader) == []


def test_prepared_is_used_when_current_and_refused_when_stale(DaliLoader, tmp_path):
    root = write_dataset(tmp_path / "data", per_class=2)
    ids = discover_ids(root)
    assert DaliLoader(root, ids, batch_size=2).form == "png"
    prepare_dataset(root, progress=False)
    assert DaliLoader(root, ids, batch_size=2).form == "prepared"
    write_sample(root, "cubes", 7, np.random.default_rng(3))
    assert DaliLoader(root, ids, batch_size=2).form == "png"
    with pytest.raises(DatasetError, match="stale"):
        DaliLoader(root, ids, batch_size=2, prepared=True)


def test_missing_dali_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # makes `import nvidia.dali` fail
    monkeypatch.delitem(sys.modules, "loaders.dali_loader", raising=False)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[dali\]"'):
        importlib.import_module("loaders.dali_loader")


def test_torch_resident_and_dali_prepared_feed_the_same_batches(data):
    """One shuffling rule (loaders.order): the same seed gives every one of them the same epochs."""
    kinds = [("torch", {"workers": 0}), ("resident", {})]
    if importlib.util.find_spec("nvidia.dali") is not None:
        kinds.append(("dali", {"prepared": True}))
    orders = {}
    for kind, options in kinds:
        loader = make_loader(kind, data["root"], data["ids"], batch_size=5, seed=11, **options)
        orders[kind] = [epoch_ids(loader, data) for _ in range(2)]
    first = orders["torch"]
    assert first[0] != first[1]
    assert all(order == first for order in orders.values()), orders


def test_every_loader_reads_the_seeds_inputs_alike(tmp_path):
    """Grey and RGB PNGs, images of another size and float16/float64 depth: torch, resident and
    DALI's prepared form yield the same tensors (DALI's png form refuses them, tests/test_check.py)."""
    from PIL import Image
    root = write_dataset(tmp_path / "data", per_class=4)
    Image.open(root / "cubes" / "rgb" / "0000.png").convert("L").save(root / "cubes" / "rgb" / "0000.png")
    Image.open(root / "cubes" / "rgb" / "0001.png").convert("RGB").resize((96, 80)).save(root / "cubes" / "rgb" / "0001.png")
    np.save(root / "spheres" / "lidar" / "0000.npy", np.load(root / "spheres" / "lidar" / "0000.npy").astype(np.float16))
    np.save(root / "spheres" / "lidar" / "0001.npy", np.load(root / "spheres" / "lidar" / "0001.npy").astype(np.float64))
    ids = discover_ids(root)
    kinds = {"torch": {"workers": 0}, "resident": {}}
    if importlib.util.find_spec("nvidia.dali"):
        prepare_dataset(root, progress=False)
        kinds["dali"] = {"prepared": True}
    batches = {kind: next(iter(make_loader(kind, root, ids, batch_size=8, shuffle=False, **options)))
               for kind, options in kinds.items()}
    for kind, batch in batches.items():
        assert all(torch.equal(a, b) for a, b in zip(batch, batches["torch"])), kind

"""The reader: XYZA against hand-computed values, and a clear error for each kind of bad data."""

import gc
import math
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import loaders.check
import loaders.dataset
from loaders.check import check_dataset
from loaders.dataset import DatasetError, decode_split, depth_to_xyza, discover_ids, read_sample, rgba_to_float
from loaders.torch_loader import FusionDataset
from conftest import write_dataset


def test_xyza_matches_hand_computed_values():
    azimuth = torch.tensor([0.0, math.pi / 2])  # rows
    zenith = torch.tensor([0.0, math.pi / 6])  # columns
    depth = torch.tensor([[2.0, 4.0], [10.0, 60.0]])
    xyza = depth_to_xyza(depth, azimuth, zenith)
    # row 0 (azimuth 0), col 0: straight ahead along +y
    assert torch.allclose(xyza[:, 0, 0], torch.tensor([0.0, 2.0, 0.0, 1.0]), atol=1e-6)
    # row 0, col 1 (zenith 30 deg): x = 0, y = 4 cos(-30), z = 4 sin(-30) = -2
    assert torch.allclose(xyza[:, 0, 1], torch.tensor([0.0, 4 * math.cos(math.pi / 6), -2.0, 1.0]), atol=1e-6)
    # row 1 (azimuth 90 deg), col 0: x = 10 sin(-90) = -10, y ~ 0
    assert torch.allclose(xyza[:, 1, 0], torch.tensor([-10.0, 0.0, 0.0, 1.0]), atol=1e-5)
    # depth 60 is no return: A = 0
    assert xyza[3, 1, 1] == 0


def test_xyza_batched_angle_tables_match_per_sample():
    torch.manual_seed(0)
    depth = torch.rand(3, 5, 6) * 60
    azimuth, zenith = torch.rand(3, 5), torch.rand(3, 6)
    batched = depth_to_xyza(depth, azimuth, zenith)
    for i in range(3):
        assert torch.allclose(batched[i], depth_to_xyza(depth[i], azimuth[i], zenith[i]))


def test_discover_and_read(tiny_data):
    ids = discover_ids(tiny_data)
    assert len(ids) == 96 and ids[0] == "cube_0000" and ids[-1] == "sphere_0047"
    rgba, depth, label = read_sample(tiny_data, "sphere_0003")
    assert rgba.shape == (64, 64, 4) and rgba.dtype == np.uint8
    assert depth.shape == (64, 64) and depth.dtype == np.float32 and label == 1


def test_seed_style_dataset_item(tiny_data):
    rgb, lidar, label = FusionDataset(tiny_data, ["cube_0001"])[0]
    rgba, depth, _ = read_sample(tiny_data, "cube_0001")
    assert rgb.shape == lidar.shape == (4, 64, 64) and label.dtype == torch.int64 and label == 0
    assert torch.equal(rgb, rgba_to_float(torch.from_numpy(rgba)))
    assert 0 <= rgb.min() and rgb.max() <= 1


@pytest.fixture
def broken(tiny_data, tmp_path):
    """A private copy of the tiny dataset that a test may damage."""
    return shutil.copytree(tiny_data, tmp_path / "copy")


def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        discover_ids(tmp_path / "nowhere")
    (tmp_path / "cubes" / "rgb").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"missing folder .*cubes/lidar"):
        discover_ids(tmp_path)


def test_missing_lidar_file(broken):
    (broken / "cubes" / "lidar" / "0005.npy").unlink()
    with pytest.raises(DatasetError, match=r"rgb/0005.png has no LiDAR file"):
        discover_ids(broken)


def test_corrupt_png(broken):
    (broken / "spheres" / "rgb" / "0002.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"cannot decode PNG .*spheres/rgb/0002.png"):
        read_sample(broken, "sphere_0002")


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "P"])
def test_pngs_without_four_channels_get_rgba(broken, mode):
    """As in the seed (PIL): grey, grey+alpha, RGB and palette PNGs are read, converted to RGBA."""
    path = broken / "cubes" / "rgb" / "0001.png"
    original = Image.open(path)
    original.convert(mode).save(path)
    rgba, _, _ = read_sample(broken, "cube_0001")
    expected = np.array(original.convert(mode).convert("RGBA"))
    assert rgba.shape == (64, 64, 4) and np.array_equal(rgba, expected)
    if mode in ("L", "RGB"):
        assert (rgba[..., 3] == 255).all()  # an opaque alpha channel


@pytest.mark.parametrize("size", [(96, 96), (40, 50)])
def test_images_of_another_size_are_resized_like_the_seed(broken, size):
    """Resized to the depth map's size with the seed's torchvision Resize (bilinear on PIL)."""
    from torchvision import transforms
    path = broken / "cubes" / "rgb" / "0001.png"
    Image.open(path).resize(size).save(path)
    rgba, depth, _ = read_sample(broken, "cube_0001")
    seed = transforms.Resize((64, 64))(Image.open(path))
    assert rgba.shape[:2] == depth.shape and np.array_equal(rgba, np.array(seed))
    rgb, _, _ = FusionDataset(broken, ["cube_0001"])[0]
    assert torch.equal(rgb, rgba_to_float(torch.from_numpy(rgba)))


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_float16_and_float64_depth_read_as_float32(broken, dtype):
    path = broken / "cubes" / "lidar" / "0002.npy"
    original = np.load(path)
    np.save(path, original.astype(dtype))
    _, depth, _ = read_sample(broken, "cube_0002")
    assert depth.dtype == np.float32 and np.array_equal(depth, original.astype(dtype).astype(np.float32))


def test_wrong_depth_shape(broken):
    np.save(broken / "cubes" / "lidar" / "0003.npy", np.zeros((64, 32), np.float32))
    with pytest.raises(DatasetError, match=r"lidar/0003.npy has shape \(64, 32\)"):
        read_sample(broken, "cube_0003")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_depth(broken, value):
    depth = np.load(broken / "cubes" / "lidar" / "0004.npy")
    depth[10, 12] = value
    np.save(broken / "cubes" / "lidar" / "0004.npy", depth)
    with pytest.raises(DatasetError, match=r"0004.npy contains 1 non-finite depth values .* row 10, column 12"):
        read_sample(broken, "cube_0004")
    with pytest.raises(DatasetError, match=r"0004.npy contains 1 non-finite"):
        FusionDataset(broken, ["cube_0004"])[0]


def test_angle_lengths_must_match_depth(broken):
    np.save(broken / "spheres" / "zenith.npy", np.zeros(63, np.float32))
    with pytest.raises(DatasetError, match="zenith.npy 63 angles"):
        read_sample(broken, "sphere_0001")


def test_unknown_id(tiny_data):
    with pytest.raises(DatasetError, match="unknown sample id 'cylinder_0001'"):
        read_sample(tiny_data, "cylinder_0001")


class _Cycle:
    """Garbage with a finaliser: the collection that frees it runs Python code, where the
    interpreter may switch threads."""

    def __init__(self):
        self.me = self

    def __del__(self):
        pass


@pytest.fixture
def gc_pressure(monkeypatch):
    """The conditions of the CPython 3.11 race in np.load (python/cpython#106905; the lead's
    reproduction fails 1 batch of 3,000 loads in 20): collections every 50 allocations, each
    depth map read leaving cycles with finalisers behind, and a thread switch whenever the
    interpreter may make one, so that threads meet inside numpy's header parse. Without the lock
    of loaders.dataset.load_npy about 1 decode of 400 samples in 3 raises SystemError here."""
    real = loaders.dataset.read_depth

    def read_depth(*args, **kwargs):
        for _ in range(20):
            _Cycle()
        return real(*args, **kwargs)

    monkeypatch.setattr(loaders.dataset, "read_depth", read_depth)
    monkeypatch.setattr(loaders.check, "read_depth", read_depth)
    thresholds, interval = gc.get_threshold(), sys.getswitchinterval()
    gc.set_threshold(50, 5, 5)
    sys.setswitchinterval(1e-6)
    yield
    gc.set_threshold(*thresholds)
    sys.setswitchinterval(interval)


def test_threaded_decode_and_check_survive_gc_pressure(tmp_path, gc_pressure):
    """decode_split and the data check, many threads each, under gc_pressure: no SystemError,
    and every round decodes the same tensors."""
    root = write_dataset(tmp_path, per_class=200, size=8)
    ids = discover_ids(root)
    first = decode_split(root, ids, workers=8)
    for _ in range(10):
        again = decode_split(root, ids, workers=8)
        assert all(torch.equal(first[name], again[name]) for name in first)
        assert not check_dataset(root, ids, workers=8, progress=False).problems


def test_angle_tables_are_read_once_per_class_folder(tiny_data, monkeypatch):
    """Two tables (azimuth, zenith) per class folder, whatever the number of samples."""
    reads = []
    real = loaders.dataset._load_vector
    monkeypatch.setattr(loaders.dataset, "_load_vector", lambda path: reads.append(path) or real(path))
    ids = discover_ids(tiny_data)
    decode_split(tiny_data, ids, workers=4)
    assert len(reads) == 4
    reads.clear()
    check_dataset(tiny_data, ids, workers=4, progress=False)
    assert len(reads) == 4
    reads.clear()
    dataset = FusionDataset(tiny_data, ids)
    [dataset[k] for k in range(0, len(ids), 8)]
    assert sorted(path.name for path in reads) == ["azimuth.npy", "azimuth.npy", "zenith.npy", "zenith.npy"]

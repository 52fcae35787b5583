"""The reader: XYZA against hand-computed values, and a clear error for each kind of bad data."""

import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from loaders.dataset import DatasetError, depth_to_xyza, discover_ids, read_sample, rgba_to_float
from loaders.torch_loader import FusionDataset


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


def test_rgb_without_alpha(broken):
    path = broken / "cubes" / "rgb" / "0001.png"
    Image.open(path).convert("RGB").save(path)
    with pytest.raises(DatasetError, match="expected RGBA"):
        read_sample(broken, "cube_0001")


def test_wrong_depth_shape(broken):
    np.save(broken / "cubes" / "lidar" / "0003.npy", np.zeros((64, 32), np.float32))
    with pytest.raises(DatasetError, match=r"lidar/0003.npy has shape \(64, 32\)"):
        read_sample(broken, "cube_0003")


def test_nan_depth(broken):
    depth = np.load(broken / "cubes" / "lidar" / "0004.npy")
    depth[10, 10] = np.nan
    np.save(broken / "cubes" / "lidar" / "0004.npy", depth)
    with pytest.raises(DatasetError, match=r"0004.npy contains NaN"):
        read_sample(broken, "cube_0004")


def test_angle_lengths_must_match_depth(broken):
    np.save(broken / "spheres" / "zenith.npy", np.zeros(63, np.float32))
    with pytest.raises(DatasetError, match="zenith.npy 63 angles"):
        read_sample(broken, "sphere_0001")


def test_unknown_id(tiny_data):
    with pytest.raises(DatasetError, match="unknown sample id 'cylinder_0001'"):
        read_sample(tiny_data, "cylinder_0001")

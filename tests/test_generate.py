"""Tests for the synthetic dataset generator (loaders.generate): layout, determinism, geometry."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loaders import generate
from loaders.generate import NO_RETURN, generate_dataset

PER_CLASS = 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """One small dataset shared by the read-only tests, to keep the suite fast."""
    return generate_dataset(tmp_path_factory.mktemp("data"), per_class=PER_CLASS, progress=False)


def load(root: Path, kind: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """RGBA uint8 [H, W, 4] and depth [H, W] of one sample."""
    rgba = np.asarray(Image.open(root / kind / "rgb" / f"{index:04d}.png"))
    return rgba, np.load(root / kind / "lidar" / f"{index:04d}.npy")


def to_xyz(root: Path, kind: str, depth: np.ndarray) -> np.ndarray:
    """The reader's depth-to-XYZ formula from DESIGN.md, written out independently."""
    az = -np.load(root / kind / "azimuth.npy").astype(np.float64)[:, None]
    ze = -np.load(root / kind / "zenith.npy").astype(np.float64)[None, :]
    d = depth.astype(np.float64)
    return np.stack(
        [d * np.sin(az) * np.cos(ze), d * np.cos(az) * np.cos(ze), d * np.sin(ze)], -1
    )


def sphere_fit_rms(points: np.ndarray) -> float:
    """RMS distance of points from their least-squares sphere: ~noise for a sphere only."""
    a = np.c_[2 * points, np.ones(len(points))]
    solution, *_ = np.linalg.lstsq(a, (points**2).sum(1), rcond=None)
    center = solution[:3]
    radius = np.sqrt(solution[3] + center @ center)
    return float(np.sqrt(((np.linalg.norm(points - center, axis=1) - radius) ** 2).mean()))


def file_bytes(root: Path) -> dict[str, bytes]:
    """Every file under root by relative path, for byte-for-byte comparison."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_dtypes_and_shapes(dataset):
    for kind in ("cubes", "spheres"):
        names = [f"{i:04d}" for i in range(PER_CLASS)]
        assert sorted(p.stem for p in (dataset / kind / "rgb").iterdir()) == names
        assert sorted(p.stem for p in (dataset / kind / "lidar").iterdir()) == names
        for angles in ("azimuth", "zenith"):
            values = np.load(dataset / kind / f"{angles}.npy")
            assert values.dtype == np.float32 and values.shape == (64,)
        with Image.open(dataset / kind / "rgb" / "0000.png") as image:
            assert image.mode == "RGBA" and image.size == (64, 64)
        depth = np.load(dataset / kind / "lidar" / "0000.npy")
        assert depth.dtype == np.float32 and depth.shape == (64, 64)
        assert (depth > 0).all() and (depth <= NO_RETURN).all()


def test_same_seed_same_bytes_regardless_of_process_count(tmp_path, monkeypatch):
    in_process = generate_dataset(tmp_path / "a", per_class=4, seed=7, progress=False)
    monkeypatch.setattr(generate, "CHUNK", 2)  # four chunks: goes through the process pool
    pooled = generate_dataset(tmp_path / "b", per_class=4, seed=7, progress=False)
    assert file_bytes(in_process) == file_bytes(pooled)


def test_different_seed_different_samples(tmp_path):
    a = file_bytes(generate_dataset(tmp_path / "a", per_class=2, seed=1, progress=False))
    b = file_bytes(generate_dataset(tmp_path / "b", per_class=2, seed=2, progress=False))
    assert a.keys() == b.keys()
    samples = [name for name in a if "rgb" in name or "lidar" in name]
    assert all(a[name] != b[name] for name in samples)


def test_rgb_alpha_agrees_with_lidar(dataset):
    for kind in ("cubes", "spheres"):
        for index in range(PER_CLASS):
            rgba, depth = load(dataset, kind, index)
            on_object = rgba[..., 3] == 255
            assert set(np.unique(rgba[..., 3])) <= {0, 255}
            assert on_object.mean() > 0.05, "the object should fill a good part of the view"
            assert (depth[on_object] < NO_RETURN).all()
            assert depth[on_object].mean() < depth[~on_object].mean()


def test_ground_returns_lie_on_a_flat_plane(dataset):
    """Background returns come from a level ground plane only if the rays match the reader."""
    for kind in ("cubes", "spheres"):
        rgba, depth = load(dataset, kind, 0)
        ground = (rgba[..., 3] == 0) & (depth < NO_RETURN)
        assert ground.sum() > 100
        heights = to_xyz(dataset, kind, depth)[ground][:, 2]
        assert heights.mean() < -1.0 and heights.std() < 0.02


def test_renderer_rays_are_the_readers_rays(dataset):
    """XYZ = depth * ray, with the ray the reader's formula implies for each pixel."""
    depth = np.full((64, 64), 3.0, dtype=np.float32)
    azimuth, zenith = generate.ray_angles(64)
    rays = generate.ray_directions(azimuth, zenith)
    assert np.allclose(depth[..., None] * rays, to_xyz(dataset, "cubes", depth))


def test_classes_differ_by_shape_not_by_colour(dataset):
    rms = {}
    colour = {}
    for kind in ("cubes", "spheres"):
        rms[kind], colour[kind] = [], []
        for index in range(PER_CLASS):
            rgba, depth = load(dataset, kind, index)
            on_object = rgba[..., 3] == 255
            rms[kind].append(sphere_fit_rms(to_xyz(dataset, kind, depth)[on_object]))
            colour[kind].append(rgba[..., :3].mean() / 255.0)
    # LiDAR points of a sphere fit a sphere to within the depth noise; a cube's faces do not.
    assert max(rms["spheres"]) < 0.03 < min(rms["cubes"])
    # Mean colour comes from one distribution for both classes, so the ranges overlap.
    assert min(colour["cubes"]) < max(colour["spheres"])
    assert min(colour["spheres"]) < max(colour["cubes"])


def test_refuses_to_overwrite_existing_dataset(tmp_path):
    (tmp_path / "spheres").mkdir()
    (tmp_path / "spheres" / "stale.txt").write_text("old")
    with pytest.raises(FileExistsError, match="spheres"):
        generate_dataset(tmp_path, per_class=1, progress=False)


def test_empty_class_folders_are_reused(tmp_path):
    (tmp_path / "cubes").mkdir()
    generate_dataset(tmp_path, per_class=1, progress=False)
    assert (tmp_path / "cubes" / "rgb" / "0000.png").is_file()


def test_rejects_non_positive_per_class(tmp_path):
    with pytest.raises(ValueError, match="per_class"):
        generate_dataset(tmp_path, per_class=0, progress=False)

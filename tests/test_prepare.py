"""The prepared form: what it writes, that it equals read_sample, and that stale copies are refused."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import write_dataset, write_sample
from loaders.dataset import CLASSES, DatasetError, discover_ids, load_angles, read_sample
from loaders.prepare import find_prepared, open_prepared, prepare_dataset


@pytest.fixture
def dataset(tmp_path):
    return write_dataset(tmp_path / "data")


def test_prepare_writes_arrays_and_manifest(dataset):
    folder = prepare_dataset(dataset, progress=False)
    assert folder == dataset / "prepared"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["ids"] == discover_ids(dataset)
    assert manifest["source"] == str(dataset.resolve())
    assert manifest["version"] == 2
    assert manifest["arrays"]["rgba"] == {"shape": [12, 64, 64, 4], "dtype": "uint8"}
    assert manifest["arrays"]["depth"] == {"shape": [12, 64, 64], "dtype": "float32"}
    assert manifest["arrays"]["azimuth"]["shape"] == [2, 64]
    assert find_prepared(dataset) == folder


def test_prepared_values_equal_read_sample(dataset):
    prepare_dataset(dataset, progress=False)
    prepared = open_prepared(dataset)
    ids = discover_ids(dataset)
    rows = prepared.rows(ids[::-1])
    for sample_id, row in zip(ids[::-1], rows):
        rgba, depth, _ = read_sample(dataset, sample_id)
        np.testing.assert_array_equal(prepared.rgba[row], rgba)
        np.testing.assert_array_equal(prepared.depth[row], depth)
    for folder, (_, label) in CLASSES.items():
        azimuth, zenith = load_angles(str(dataset), folder)
        np.testing.assert_array_equal(prepared.azimuth[label], azimuth)
        np.testing.assert_array_equal(prepared.zenith[label], zenith)


def test_prepare_to_another_folder_is_not_found_at_root(dataset, tmp_path):
    folder = prepare_dataset(dataset, out=tmp_path / "elsewhere", progress=False)
    assert (folder / "manifest.json").is_file()
    assert find_prepared(dataset) is None


def test_a_sample_added_after_preparing_makes_it_stale(dataset):
    prepare_dataset(dataset, progress=False)
    write_sample(dataset, "spheres", 99, np.random.default_rng(1))
    assert find_prepared(dataset) is None
    with pytest.raises(DatasetError, match=r"stale.*1 added.*sphere_0099.*bench prepare"):
        open_prepared(dataset)
    prepare_dataset(dataset, progress=False)
    assert find_prepared(dataset) == dataset / "prepared"


def test_incomplete_or_missing_prepared_forms_are_refused(dataset):
    assert find_prepared(dataset) is None
    with pytest.raises(DatasetError, match="manifest.json is missing"):
        open_prepared(dataset)
    folder = prepare_dataset(dataset, progress=False)
    np.save(folder / "depth.npy", np.zeros((3, 64, 64), np.float32))  # as if a write was cut short
    assert find_prepared(dataset) is None
    with pytest.raises(DatasetError, match="depth.npy is"):
        open_prepared(dataset)
    (folder / "manifest.json").unlink()
    assert find_prepared(dataset) is None


def test_unknown_ids_are_named(dataset):
    prepare_dataset(dataset, progress=False)
    with pytest.raises(DatasetError, match="cube_0042"):
        open_prepared(dataset).rows(["cube_0000", "cube_0042"])


def test_a_file_rewritten_after_preparing_makes_it_stale(dataset):
    """Same ids, other content: the files' signature (size, mtime) changed, so it is refused."""
    prepare_dataset(dataset, progress=False)
    path = dataset / "cubes" / "lidar" / "0002.npy"
    np.save(path, np.load(path) + 1)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # coarse-clock filesystems
    assert find_prepared(dataset) is None
    with pytest.raises(DatasetError, match=r"stale: files of .* changed after it was prepared.*bench prepare"):
        open_prepared(dataset)


def test_broken_data_leaves_no_prepared_folder(dataset):
    (dataset / "cubes" / "rgb" / "0001.png").write_bytes(b"broken")
    with pytest.raises(DatasetError, match=r"cannot decode PNG .*cubes/rgb/0001.png"):
        prepare_dataset(dataset, progress=False)
    assert not (dataset / "prepared").exists()


def test_prepared_form_takes_the_seeds_inputs(dataset):
    """An RGB image of another size and a float64 depth map are prepared as read_sample reads them."""
    path = dataset / "spheres" / "rgb" / "0003.png"
    Image.open(path).convert("RGB").resize((100, 100)).save(path)
    depth_path = dataset / "spheres" / "lidar" / "0003.npy"
    np.save(depth_path, np.load(depth_path).astype(np.float64))
    prepare_dataset(dataset, progress=False)
    prepared = open_prepared(dataset)
    row = prepared.rows(["sphere_0003"])[0]
    rgba, depth, _ = read_sample(dataset, "sphere_0003")
    np.testing.assert_array_equal(prepared.rgba[row], rgba)
    np.testing.assert_array_equal(prepared.depth[row], depth)
    assert (rgba[..., 3] == 255).all()

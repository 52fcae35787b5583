"""The data check: every broken file named, the fingerprint follows content, and every loader's
errors name their file (torch workers, DALI's png form)."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from loaders import make_loader
from loaders.check import check_dataset
from loaders.dataset import DatasetError, discover_ids


@pytest.fixture
def broken(tiny_data, tmp_path):
    return shutil.copytree(tiny_data, tmp_path / "copy")


def damage(root):
    """Four kinds of broken sample; returns the file each problem must name."""
    (root / "spheres" / "rgb" / "0002.png").write_bytes(b"not a png")
    depth = np.load(root / "cubes" / "lidar" / "0004.npy")
    depth[3, 3] = np.inf
    np.save(root / "cubes" / "lidar" / "0004.npy", depth)
    np.save(root / "cubes" / "lidar" / "0005.npy", np.zeros((64, 32), np.float32))
    (root / "spheres" / "lidar" / "0007.npy").write_bytes(b"\x93NUMPY garbage")
    return ["spheres/rgb/0002.png", "cubes/lidar/0004.npy", "cubes/lidar/0005.npy", "spheres/lidar/0007.npy"]


def test_clean_data_passes_with_a_content_fingerprint(tiny_data, broken):
    ids = discover_ids(tiny_data)
    result = check_dataset(tiny_data, ids, workers=2, progress=False)
    assert result.samples == 96 and result.problems == []
    result.raise_if_broken()
    copy = check_dataset(broken, ids, workers=2, progress=False)
    assert copy.fingerprint == result.fingerprint  # the same content elsewhere is the same data
    np.save(broken / "cubes" / "lidar" / "0001.npy", np.load(broken / "cubes" / "lidar" / "0001.npy") + 1)
    assert check_dataset(broken, ids, workers=2, progress=False).fingerprint != result.fingerprint


def test_every_problem_is_listed_with_its_file(broken):
    files = damage(broken)
    result = check_dataset(broken, discover_ids(broken), workers=2, progress=False)
    assert len(result.problems) == 4
    for name in files:
        assert any(name in problem for problem in result.problems), name
    with pytest.raises(DatasetError, match=r"4 problems in the 96 samples checked") as error:
        result.raise_if_broken()
    assert "non-finite" in str(error.value) and "has shape (64, 32)" in str(error.value)
    with pytest.raises(DatasetError, match=r"and 2 more"):
        result.raise_if_broken(shown=2)


def test_a_wrong_angle_table_is_named_once_not_blamed_on_every_depth_map(broken):
    files = damage(broken)
    np.save(broken / "cubes" / "zenith.npy", np.zeros(16, np.float32))
    problems = check_dataset(broken, discover_ids(broken), workers=2, progress=False).problems
    assert problems[0] == (f"{broken}/cubes/zenith.npy has 16 angles, but 47 of the 48 checked depth maps in "
                           f"{broken}/cubes/lidar have 64 columns (shape (64, 64)); fix zenith.npy (one angle per "
                           "depth map column)")
    assert len(problems) == 4  # the table, and the three maps or images broken on their own
    for name in [files[0], files[2], files[3]]:
        assert any(name in problem for problem in problems[1:]), name


def test_unreadable_files_and_folders_say_so(broken, monkeypatch):
    """As a user without the permission meets them (root reads anything, so the error is planted;
    tests/test_faults.py has the chmod cases)."""
    unreadable = broken / "cubes" / "rgb" / "0003.png"
    read_bytes = Path.read_bytes

    def denied(path):
        if path == unreadable or path == broken / "cubes" / "rgb":
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)
    monkeypatch.setattr(Path, "read_bytes", denied)
    problems = check_dataset(broken, discover_ids(broken), workers=2, progress=False).problems
    assert problems == [f"cannot read {unreadable}: Permission denied"]
    monkeypatch.setattr("os.listdir", denied)
    with pytest.raises(DatasetError, match=f"cannot read folder {broken}/cubes/rgb: Permission denied"):
        discover_ids(broken)


def test_torch_worker_errors_keep_the_cause_and_file(broken):
    """Not "Caught DatasetError in DataLoader worker process 1. Original Traceback ..." cut short."""
    damage(broken)
    loader = make_loader("torch", broken, ["sphere_0002"] * 2, batch_size=2, shuffle=False,
                         workers=1)
    with pytest.raises(DatasetError) as error:
        next(iter(loader))
    message = str(error.value)
    assert message.startswith("cannot decode PNG") and "spheres/rgb/0002.png" in message
    assert "Traceback" not in message and "\n" not in message


def test_dali_png_form_refuses_what_it_cannot_read_like_the_others(broken):
    """RGB or resized images: a one-line error naming the file and `bench prepare`; the prepared
    form (made by loaders.dataset) reads them and agrees with the torch loader."""
    pytest.importorskip("nvidia.dali")
    import torch
    from PIL import Image

    from loaders.prepare import prepare_dataset
    path = broken / "cubes" / "rgb" / "0001.png"
    Image.open(path).convert("RGB").resize((80, 80)).save(path)
    ids = ["cube_0000", "cube_0001", "sphere_0000", "sphere_0001"]
    with pytest.raises(DatasetError, match=r"cubes/rgb/0001.png is not an 8-bit RGBA PNG of 64x64 .*bench prepare"):
        make_loader("dali", broken, ids, batch_size=4, shuffle=False, prepared=False)
    prepare_dataset(broken, progress=False)
    dali = next(iter(make_loader("dali", broken, ids, batch_size=4, shuffle=False)))
    seed = next(iter(make_loader("torch", broken, ids, batch_size=4, shuffle=False, workers=0)))
    assert all(torch.equal(a, b) for a, b in zip(dali, seed))


def test_dali_png_form_names_a_wrong_depth_shape(broken):
    pytest.importorskip("nvidia.dali")
    np.save(broken / "spheres" / "lidar" / "0001.npy", np.zeros((64, 32), np.float32))
    with pytest.raises(DatasetError, match=r"spheres/lidar/0001.npy has shape \(64, 32\)"):
        make_loader("dali", broken, ["cube_0000", "sphere_0001"], batch_size=2, prepared=False)

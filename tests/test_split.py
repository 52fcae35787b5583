import json

import pytest

from loaders.dataset import DatasetError, label_of
from loaders.split import check_class_prior, load_split, make_split, save_split, stratified_subset

IDS = [f"cube_{i:04d}" for i in range(50)] + [f"sphere_{i:04d}" for i in range(40)]


def test_split_is_seeded_stratified_and_disjoint():
    split = make_split(IDS, 0.2, seed=42)
    assert split == make_split(IDS, 0.2, seed=42)
    assert split != make_split(IDS, 0.2, seed=1)
    assert not set(split["train"]) & set(split["val"])
    assert sorted(split["train"] + split["val"]) == sorted(IDS)
    val_labels = [label_of(i) for i in split["val"]]
    assert val_labels.count(0) == 10 and val_labels.count(1) == 8


def test_split_round_trip_in_the_seeds_format(tmp_path):
    path = save_split(make_split(IDS), tmp_path / "split.json")
    raw = json.loads(path.read_text())
    assert set(raw) == {"seed", "train", "val"}
    assert load_split(path, IDS) == raw


def test_leakage_is_an_error(tmp_path):
    split = make_split(IDS)
    split["val"].append(split["train"][0])
    with pytest.raises(DatasetError, match="data leakage"):
        load_split(save_split(split, tmp_path / "s.json"), IDS)


def test_unknown_ids_are_an_error(tmp_path):
    split = make_split(IDS)
    split["train"].append("cube_9999")
    with pytest.raises(DatasetError, match=r"s.json: 1 train ids are not in the dataset"):
        load_split(save_split(split, tmp_path / "s.json"), IDS)


def test_missing_class_is_an_error(tmp_path):
    split = make_split(IDS)
    split["val"] = [i for i in split["val"] if i.startswith("cube")]
    with pytest.raises(DatasetError, match="val split has only class"):
        load_split(save_split(split, tmp_path / "s.json"), IDS)


def test_missing_key_and_bad_json(tmp_path):
    (tmp_path / "a.json").write_text('{"train": []}')
    with pytest.raises(DatasetError, match="has no 'seed' key"):
        load_split(tmp_path / "a.json", IDS)
    (tmp_path / "b.json").write_text("{oops")
    with pytest.raises(DatasetError, match="cannot read split file"):
        load_split(tmp_path / "b.json", IDS)


def test_class_prior_guard():
    assert check_class_prior([0, 1, 1, 0]) == 0.5
    with pytest.raises(DatasetError, match="extremely imbalanced"):
        check_class_prior([1] * 32)
    with pytest.raises(DatasetError, match="extremely imbalanced"):
        check_class_prior([0] * 32)


def test_stratified_subset_keeps_both_classes():
    split = make_split(IDS)
    subset = stratified_subset(split["train"], 10)
    assert len(subset) == 10 and {label_of(i) for i in subset} == {0, 1}
    assert stratified_subset(split["train"], None) == split["train"]

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
    with pytest.raises(DatasetError, match="the val list has only cubes; both cubes and spheres"):
        load_split(save_split(split, tmp_path / "s.json"), IDS)


def test_empty_list_is_called_empty(tmp_path):
    split = make_split(IDS)
    split["train"] = []
    with pytest.raises(DatasetError, match="the train list is empty"):
        load_split(save_split(split, tmp_path / "s.json"), IDS)


def test_missing_key_and_bad_json(tmp_path):
    (tmp_path / "a.json").write_text('{"train": []}')
    with pytest.raises(DatasetError, match="has no 'seed' key"):
        load_split(tmp_path / "a.json", IDS)
    (tmp_path / "b.json").write_text("{oops")
    with pytest.raises(DatasetError, match="cannot read split file"):
        load_split(tmp_path / "b.json", IDS)


def test_class_prior_guard_trips_on_one_class_batches_of_32():
    assert check_class_prior([0, 1, 1, 0]) == 0.5
    with pytest.raises(DatasetError, match="32 of 32 samples of class 1"):
        check_class_prior([1] * 32)
    with pytest.raises(DatasetError, match="0 of 32 samples of class 1"):
        check_class_prior([0] * 32, share=0.5)
    with pytest.raises(DatasetError, match="memorise label ordering"):
        check_class_prior([0] * 30 + [1] * 2)


def test_class_prior_guard_knows_the_batch_size():
    """At batch 8 a one-class batch happens by chance (1 in 128 on a balanced split): no error."""
    assert check_class_prior([1] * 8) == 1.0
    assert check_class_prior([0] * 3 + [1] * 29) == 29 / 32  # p ~ 2.6e-6: within chance


def test_class_prior_guard_false_alarm_rate_on_shuffled_balanced_batches():
    """The guard's trip rate on truly shuffled batches is below its stated rate, at every size:
    the exact probability (summed over every possible batch) of a false alarm is < 1e-6."""
    from scipy.stats import binom
    from loaders.split import FALSE_ALARM_RATE
    for n in (2, 8, 16, 32, 64, 256):
        for share in (0.5, 0.3):
            trips = 0.0
            for ones in range(n + 1):
                try:
                    check_class_prior([1] * ones + [0] * (n - ones), share=share)
                except DatasetError:
                    trips += binom.pmf(ones, n, share)
            assert trips <= FALSE_ALARM_RATE


def test_class_prior_guard_uses_the_split_share():
    """A split with 10 % spheres makes a batch of 1 sphere in 32 normal, not an alarm."""
    assert check_class_prior([1] + [0] * 31, share=0.1) == 1 / 32
    with pytest.raises(DatasetError):
        check_class_prior([1] * 16 + [0] * 16, share=0.1)


@pytest.mark.parametrize("train, message", [
    ('"cube_0001"', "'train' must be a list of sample id strings, got str"),
    ('[["cube_0001"]]', "'train' must be a list of sample id strings"),
    ('["cube_0001", "cube_0001", "sphere_0001"]', "1 train ids appear more than once, e.g. \\['cube_0001'\\]"),
])
def test_split_with_bad_lists_is_one_line_error(tmp_path, train, message):
    path = tmp_path / "split.json"
    path.write_text(f'{{"seed": 1, "train": {train}, "val": ["cube_0002", "sphere_0002"]}}')
    with pytest.raises(DatasetError, match=message) as error:
        load_split(path, IDS)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_stratified_subset_keeps_both_classes():
    split = make_split(IDS)
    subset = stratified_subset(split["train"], 10)
    assert len(subset) == 10 and {label_of(i) for i in subset} == {0, 1}
    assert stratified_subset(split["train"], None) == split["train"]

"""The history store and its change points: results of many commits and machines in plain files,
added once however often they are added, bad input refused whole; a 10 % step in 3 % noise is
found at its commit, pure noise gives no change."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from reports.history.changes import change_indices, env_differences, find_changes, points
from reports.history.store import HistoryError, add, commit_of, load
from reports.results import CURVE_COLUMNS, RESULT_COLUMNS, append_rows

FIXTURES = Path(__file__).parent / "fixtures"
H200_ADD, CPU_QUICK = FIXTURES / "results" / "h200-add", FIXTURES / "results" / "cpu-quick"
NOISE_A = FIXTURES / "benchmarks" / "cpu-noise-a.json"


def commit_id(number: int) -> str:
    return f"{number:04d}" + "abcdef0123456789abcdef0123456789abcd"


def make_run_dir(path: Path, commit: str, speeds: dict[str, float], hardware: str = "nvidia-h200",
                 env: dict | None = None, rng=None, noise: float = 0.0) -> Path:
    """A run directory as `bench all` writes it: env.json, results.csv, curves.csv (3 epochs)."""
    rng = rng or np.random.default_rng(0)
    path.mkdir(parents=True)
    (path / "env.json").write_text(json.dumps({"schema_version": 2, "hardware": hardware, "torch": "2.11.0",
                                               "driver": "580", **(env or {}),
                                               "settings": {"epochs": 3, "code": commit[:7]}}))
    rows, curves = [], []
    for variant, speed in speeds.items():
        windows = speed * (1 + noise * rng.standard_normal(3))
        rows.append({"variant": variant, "status": "ok", "train_samples_per_s": windows.mean(),
                     "infer_samples_per_s": 3 * speed, "samples_per_j": speed / 100, "time_to_target_s": 1e5 / speed,
                     "accuracy": 99.0})
        curves += [{"variant": variant, "epoch": e, "train_samples_per_s": w} for e, w in enumerate(windows)]
    append_rows(path / "results.csv", rows, RESULT_COLUMNS)
    append_rows(path / "curves.csv", curves, CURVE_COLUMNS)
    return path


def test_commit_of_reads_git_describe():
    assert commit_of("v0.1-3-gd453f4f-dirty") == "d453f4f"
    assert commit_of("d453f4f-dirty") == "d453f4f"
    assert commit_of("d453f4f") == "d453f4f"
    assert commit_of("v1.0") == "v1.0"
    assert commit_of("unknown") == commit_of("") == ""


def test_add_is_idempotent_and_keeps_samples_env_and_source(tmp_path):
    store = tmp_path / "history"
    counts = add(store, [H200_ADD, NOISE_A])
    assert counts[str(H200_ADD)] > 0 and counts[str(NOISE_A)] == 4
    before = {p.name: p.read_bytes() for p in store.iterdir()}
    assert set(add(store, [H200_ADD, NOISE_A]).values()) == {0}
    assert {p.name: p.read_bytes() for p in store.iterdir()} == before  # nothing rewritten differently

    records, envs = load(store)
    train = records[(records["metric"] == "train_samples_per_s") & (records["hardware"] == "nvidia-h200")].iloc[0]
    curves = pd.read_csv(H200_ADD / "curves.csv")
    windows = curves.loc[curves["variant"] == train["case"], "train_samples_per_s"].tolist()
    assert train["samples"] == pytest.approx(windows) and train["value"] == pytest.approx(np.median(windows))
    assert envs[train["env"]]["gpu_name"] == "NVIDIA H200"
    assert (store / train["source"]).resolve() == H200_ADD.resolve()

    rounds = records[records["metric"] == "round_s"].iloc[0]
    doc = json.loads(NOISE_A.read_text())
    assert rounds["hardware"] == "cpu-intel-xeon-processor-2c"
    assert rounds["commit"] == doc["commit_info"]["id"] and rounds["commit_time"] == doc["commit_info"]["time"]
    assert len(rounds["samples"]) == len(doc["benchmarks"][0]["stats"]["data"])
    assert envs[rounds["env"]]["machine_info"] == doc["machine_info"]


def test_a_copy_of_a_result_is_the_same_result(tmp_path):
    copy = tmp_path / "elsewhere" / "run"
    copy.parent.mkdir()
    copy.mkdir()
    for name in ("env.json", "results.csv", "curves.csv"):
        (copy / name).write_bytes((CPU_QUICK / name).read_bytes())
    add(tmp_path / "h", [CPU_QUICK])
    assert set(add(tmp_path / "h", [copy]).values()) == {0}


@pytest.mark.parametrize("make_bad, expected", [
    (lambda d: d.mkdir(), "not a run directory"),
    (lambda d: (d.mkdir(), (d / "env.json").write_text("{"), (d / "results.csv").write_text("variant,status\n")),
     "unreadable run directory"),
    (lambda d: d.with_suffix(".json").write_text('{"benchmarks": []}'), "no benchmarks"),
])
def test_a_malformed_input_adds_nothing_and_names_the_file(tmp_path, capsys, make_bad, expected):
    bad = tmp_path / "bad"
    make_bad(bad)
    bad = bad if bad.exists() else bad.with_suffix(".json")
    store = tmp_path / "history"
    assert main(["history", "add", str(CPU_QUICK), str(bad), "--store", str(store)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and str(bad) in error and expected in error
    assert not store.exists()  # the good input before it was not written either


def test_commit_order_comes_from_commit_time_not_from_the_order_added(tmp_path):
    runs = [make_run_dir(tmp_path / f"r{i}", commit_id(i), {"add": 1000.0 + i}) for i in range(3)]
    times = {commit_id(i)[:7]: (commit_id(i), f"2026-01-0{i + 1}T00:00:00+00:00") for i in range(3)}
    add(tmp_path / "h", list(reversed(runs)), resolve=times.get)
    table = points(load(tmp_path / "h")[0])
    train = table[table["metric"] == "train_samples_per_s"]
    assert list(train["commit"]) == [commit_id(i) for i in range(3)]  # resolved to the full id, in commit order


def step_series(seed: int, n: int = 40, at: int = 20, step: float = 0.9, noise: float = 0.03) -> np.ndarray:
    values = 1000 * (1 + noise * np.random.default_rng(seed).standard_normal(n))
    values[at:] *= step
    return values


def confirmed(values: np.ndarray) -> list[int]:
    """Indices of the confirmed changes of one series through the store's code path."""
    records = pd.DataFrame({"hardware": "h", "case": "c", "metric": "train_samples_per_s", "value": values,
                            "samples": None, "commit": [commit_id(i) for i in range(len(values))],
                            "commit_time": [f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}+00:00" for i in
                                            range(len(values))], "time": None, "added": "2026", "env": "e",
                            "source": "s", "report": "r"})
    return list(find_changes(records, {"e": {}})["index"])


def test_a_10_percent_step_in_3_percent_noise_is_found_at_its_commit():
    """Over 100 fixed seeds (deterministic): at least 95 find one change, within one commit."""
    hits = sum(len(found) == 1 and abs(found[0] - 20) <= 1 for found in (confirmed(step_series(s)) for s in range(100)))
    assert hits >= 95


def test_pure_noise_gives_no_change():
    """Over 100 fixed seeds of 3 % noise (and 40 of 1 %): at most 2 series report any change."""
    false = sum(bool(confirmed(step_series(s, step=1.0))) for s in range(100))
    false += sum(bool(confirmed(step_series(s, step=1.0, noise=0.01))) for s in range(100, 140))
    assert false <= 2


def test_too_short_a_series_is_never_split():
    assert change_indices([1.0, 1.0, 2.0, 2.0]) == []


def test_env_differences_name_every_changed_field_generically():
    before = [{"torch": "2.9.0", "threads": {"intra_op": 8}, "started": "a"}] * 3
    after = [{"torch": "2.10.0", "threads": {"intra_op": 8}, "started": "b", "new_field": 1}] * 3
    assert env_differences(before, after) == ["torch: 2.9.0 -> 2.10.0", "new_field: (none) -> 1"]


def test_changes_cli_finds_a_torch_upgrade_step_and_names_it(tmp_path, capsys):
    rng = np.random.default_rng(1)
    speeds = step_series(3, n=16, at=8, noise=0.01)
    runs = [make_run_dir(tmp_path / f"r{i}", commit_id(i), {"add-b32": s, "mul-b32": 2000.0}, rng=rng, noise=0.01,
                         env={"torch": "2.9.0" if i < 8 else "2.10.0"}) for i, s in enumerate(speeds)]
    times = {commit_id(i)[:7]: (commit_id(i), f"2026-01-{i + 1:02d}T00:00:00+00:00") for i in range(16)}
    add(tmp_path / "h", runs, resolve=times.get)
    out = tmp_path / "changes.csv"
    assert main(["history", "changes", "--store", str(tmp_path / "h"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(out)
    train = table[(table["metric"] == "train_samples_per_s")]
    assert list(train["case"]) == ["add-b32"]  # the flat series has none
    change = train.iloc[0]
    assert change["before_commit"] == commit_id(7) and change["after_commit"] == commit_id(8)
    assert change["direction"] == "regression" and change["low"] < change["ratio"] < change["high"] < 1
    assert "torch: 2.9.0 -> 2.10.0" in change["env_differs"]
    assert f"{commit_id(7)[:7]}..{commit_id(8)[:7]}" in printed


def test_a_failed_add_leaves_an_existing_store_as_it_was(tmp_path):
    store = tmp_path / "history"
    add(store, [CPU_QUICK])
    before = {p.name: p.read_bytes() for p in store.iterdir()}
    (tmp_path / "bad.json").write_text("not json")
    with pytest.raises(HistoryError, match="bad.json"):
        add(store, [H200_ADD, tmp_path / "bad.json"])
    assert {p.name: p.read_bytes() for p in store.iterdir()} == before


def test_a_corrupt_store_line_is_named(tmp_path, capsys):
    store = tmp_path / "history"
    add(store, [CPU_QUICK])
    path = next(store.glob("results-*.jsonl"))
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + ["{torn"]) + "\n")
    assert main(["history", "changes", "--store", str(store)]) == 2
    assert f"{path} line {len(lines) + 1}: not a JSON record" in capsys.readouterr().err

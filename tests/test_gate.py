"""The regression gate on pytest-benchmark JSON: real noise passes, a planted regression fails,
too few rounds is inconclusive, other hardware is never a reference, --confirm reruns."""

import json
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main
from bench.commands import gate as gate_command
from reports.gate import GateError, geometric_mean, judge, load_benchmarks, suspects

NOISE = Path(__file__).parent / "fixtures" / "benchmarks"
INFER_ADD = "tests/test_benchmarks.py::test_cpu_inference_step[add]"


def recording(tmp_path, name="current.json", source="cpu-noise-b.json", scale=None, rounds=None, hardware=None,
              drop=()):
    """A copy of a real recording with cases slowed (rounds x factor), cut short, rekeyed or dropped."""
    doc = json.loads((NOISE / source).read_text())
    doc["benchmarks"] = [b for b in doc["benchmarks"] if b["fullname"] not in drop]
    for bench in doc["benchmarks"]:
        data = np.asarray(bench["stats"]["data"]) * (scale or {}).get(bench["fullname"], 1.0)
        bench["stats"]["data"] = data[:rounds].tolist()
        if hardware:
            bench["extra_info"]["hardware_key"] = hardware
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def test_two_noisy_recordings_of_the_same_code_pass(capsys):
    """Recorded one after the other on a shared 2-core machine: ratios up to 1.2, yet no fail."""
    table = judge(load_benchmarks(NOISE / "cpu-noise-a.json")["cases"],
                  load_benchmarks(NOISE / "cpu-noise-b.json")["cases"])
    assert table["ratio"].max() > 1.1  # a plain 10 % gate on means would fail here
    assert not table["fails"].any()
    assert main(["gate", str(NOISE / "cpu-noise-a.json"), str(NOISE / "cpu-noise-b.json")]) == 0
    assert "PASS" in capsys.readouterr().out


def test_planted_regression_fails(tmp_path, capsys):
    slowed = recording(tmp_path, source="cpu-noise-a.json", scale={INFER_ADD: 1.6})
    table = judge(load_benchmarks(NOISE / "cpu-noise-a.json")["cases"], load_benchmarks(slowed)["cases"])
    assert list(table.loc[table["fails"], "case"]) == [INFER_ADD]
    row = table.set_index("case").loc[INFER_ADD]
    assert row["verdict"] == "slower" and row["p"] < 0.002 and row["ratio"] == pytest.approx(1.6)
    summary = tmp_path / "summary.md"
    assert main(["gate", str(NOISE / "cpu-noise-a.json"), str(slowed), "--summary", str(summary)]) == 1
    assert f"FAIL**: confirmed slower: {INFER_ADD}" in summary.read_text()


def test_too_few_rounds_is_inconclusive(tmp_path):
    short = recording(tmp_path, source="cpu-noise-a.json", scale={INFER_ADD: 2.0}, rounds=5)
    table = judge(load_benchmarks(NOISE / "cpu-noise-a.json")["cases"], load_benchmarks(short)["cases"])
    row = table.set_index("case").loc[INFER_ADD]
    assert row["verdict"] == "inconclusive" and "too few" in row["reason"] and not row["fails"]
    assert INFER_ADD in suspects(table)  # worth a confirming rerun


def test_geometric_mean_covers_only_cases_in_both(tmp_path):
    base = load_benchmarks(NOISE / "cpu-noise-a.json")["cases"]
    current = {case: rounds * 1.25 for case, rounds in base.items()}
    current["tests/test_benchmarks.py::test_new_case"] = np.ones(10)
    del current[INFER_ADD]
    table = judge(base, current)
    assert geometric_mean(table) == pytest.approx(1.25)
    assert set(table.loc[table["verdict"].isin(["new", "missing"]), "case"]) == {
        "tests/test_benchmarks.py::test_new_case", INFER_ADD}


def test_other_hardware_is_never_a_reference(tmp_path, capsys):
    slowed = recording(tmp_path, source="cpu-noise-a.json", scale={INFER_ADD: 1.6}, hardware="nvidia-h100-80gb-hbm3")
    assert main(["gate", str(NOISE / "cpu-noise-a.json"), str(slowed)]) == 0
    out = capsys.readouterr().out
    assert "For information only" in out and "no pass/fail reference" in out and "FAIL" not in out


def test_baselines_folder_picks_this_hardware(tmp_path, capsys):
    current = recording(tmp_path, source="cpu-noise-a.json", scale={INFER_ADD: 1.6})
    key = load_benchmarks(current)["hardware"]
    (tmp_path / "baselines").mkdir()
    assert main(["gate", str(tmp_path / "baselines"), str(current)]) == 0  # none recorded yet
    assert f"No baseline for hardware `{key}`" in capsys.readouterr().out
    (tmp_path / "baselines" / key).mkdir()
    (tmp_path / "baselines" / key / "baseline.json").write_text((NOISE / "cpu-noise-a.json").read_text())
    assert main(["gate", str(tmp_path / "baselines"), str(current)]) == 1


def test_json_without_raw_rounds_is_a_clear_error(tmp_path):
    doc = json.loads((NOISE / "cpu-noise-a.json").read_text())
    del doc["benchmarks"][0]["stats"]["data"]
    (tmp_path / "stats-only.json").write_text(json.dumps(doc))
    with pytest.raises(GateError, match="no raw rounds"):
        load_benchmarks(tmp_path / "stats-only.json")


@pytest.mark.parametrize("regressed", [True, False])
def test_confirm_reruns_suspects_interleaved(tmp_path, monkeypatch, capsys, regressed):
    """A suspect case is rerun A B A B against the baseline commit; only a confirmed slowdown fails."""
    calls = []
    rng = np.random.default_rng(0)

    def fake_runner(tree, case):
        calls.append((tree, case))
        slow = 1.5 if regressed and tree == Path.cwd() else 1.0
        return list(slow * rng.normal(1.0, 0.02, 4))

    monkeypatch.setattr(gate_command, "baseline_tree", lambda commit: nullcontext(tmp_path / f"tree-{commit}"))
    monkeypatch.setattr(gate_command, "run_case", fake_runner)
    slowed = recording(tmp_path, source="cpu-noise-a.json", scale={INFER_ADD: 1.6})
    code = main(["gate", str(NOISE / "cpu-noise-a.json"), str(slowed), "--confirm", "--reruns", "3"])
    baseline_tree = tmp_path / "tree-196c654073f29d4820d7f005bf8da56b135fc427"
    assert calls == [(baseline_tree, INFER_ADD), (Path.cwd(), INFER_ADD)] * 3
    assert code == (1 if regressed else 0)
    assert "Confirmation: suspect cases rerun" in capsys.readouterr().out


def test_significant_slowdown_under_the_threshold_is_slower_within_threshold():
    """A 5 % slowdown the rounds prove, under the 10 % threshold: named, not "same", and no fail."""
    rng = np.random.default_rng(0)
    base = {"case": rng.normal(1.0, 0.01, 30)}
    row = judge(base, {"case": rng.normal(1.05, 0.01, 30)}).iloc[0]
    assert row["verdict"] == "slower-within-threshold" and not row["fails"]
    assert 1 < row["low"] < row["high"] < 1.1
    assert judge(base, {"case": rng.normal(1.0, 0.01, 30)}).iloc[0]["verdict"] == "same"
    assert judge(base, {"case": rng.normal(1.2, 0.01, 30)}).iloc[0]["verdict"] == "slower"

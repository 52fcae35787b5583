"""`bench compare` on the H200 and CPU fixture runs: ratios, verdicts, leaderboard, bad input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reports.compare import CompareError, compare_table, leaderboard, load_runs, write_compare
from bench.cli import main

RUNS = Path(__file__).parent / "fixtures" / "results"
ADD = "add-maxpool-fp32-eager-contig-resident-b32"


def make_run(tmp_path, name, source="h200-seed", scale=None, keep_epochs=None, drop=(), env=None, throttled=()):
    """A copy of a fixture run, changed: throughput of variants scaled, epochs kept, variants dropped."""
    run = tmp_path / name
    shutil.copytree(RUNS / source, run)
    results, curves = pd.read_csv(run / "results.csv"), pd.read_csv(run / "curves.csv")
    for variant, factor in (scale or {}).items():
        results.loc[results["variant"] == variant, "train_samples_per_s"] *= factor
        curves.loc[curves["variant"] == variant, "train_samples_per_s"] *= factor
    if keep_epochs is not None:
        curves = curves[curves["epoch"].map(keep_epochs)]
    results["throttled"] = results["variant"].isin(throttled)
    results[~results["variant"].isin(drop)].to_csv(run / "results.csv", index=False)
    curves[~curves["variant"].isin(drop)].to_csv(run / "curves.csv", index=False)
    if env:
        (run / "env.json").write_text(json.dumps({**json.loads((run / "env.json").read_text()), **env}))
    return run


def verdicts(table):
    rows = table[(table["metric"] == "train_samples_per_s") & table["ratio"].notna() & table["verdict"].notna()]
    return dict(zip(rows["variant"], rows["verdict"]))


def test_planted_slowdown_is_called_slower_with_its_ratio(tmp_path):
    runs = load_runs([RUNS / "h200-seed", make_run(tmp_path, "slow", scale={ADD: 0.8})])
    table = compare_table(runs)
    row = table[(table["variant"] == ADD) & (table["metric"] == "train_samples_per_s")
                & (table["run"] == runs[1].label)]
    assert row["verdict"].item() == "slower"
    assert row["ratio"].item() == pytest.approx(0.8)
    assert row["low"].item() < 0.8 < row["high"].item() and row["p"].item() < 0.01
    others = {v: verdict for v, verdict in verdicts(table).items() if v != ADD}
    assert "same" in others.values() and set(others.values()) <= {"same", "inconclusive"}  # late: 11 % spread


def test_pure_noise_is_never_called_faster_or_slower(tmp_path):
    """Even against odd epochs of the same H200 run: real noise, no change."""
    even = make_run(tmp_path, "even", keep_epochs=lambda e: e % 2 == 0)
    odd = make_run(tmp_path, "odd", keep_epochs=lambda e: e % 2 == 1)
    found = verdicts(compare_table(load_runs([even, odd])))
    assert len(found) == 4 and set(found.values()) <= {"same", "inconclusive"}


def test_too_few_samples_or_throttled_is_inconclusive(tmp_path):
    found = verdicts(compare_table(load_runs([RUNS / "h200-seed", RUNS / "h200-add"])))
    assert found == {ADD: "inconclusive"}  # the add run has 2 epochs per variant
    throttled = make_run(tmp_path, "hot", scale={ADD: 0.8}, throttled=[ADD])
    table = compare_table(load_runs([RUNS / "h200-seed", throttled]))
    assert verdicts(table)[ADD] == "inconclusive"
    assert "throttled" in table.loc[(table["variant"] == ADD) & table["reason"].notna(), "reason"].iloc[0]


def test_variants_in_only_some_runs_are_listed_not_dropped(tmp_path):
    partial = make_run(tmp_path, "partial", drop=["late-maxpool-fp32-eager-contig-resident-b32"])
    runs = load_runs([RUNS / "h200-seed", partial])
    out = write_compare(runs, tmp_path / "cmp")
    text = out[0].read_text()
    section = text.split("## Variants in only some runs")[1]
    assert "late-maxpool-fp32-eager-contig-resident-b32" in section
    assert "late-maxpool-fp32-eager-contig-resident-b32" in set(pd.read_csv(out[1])["variant"])


def test_leaderboard_has_a_column_per_hardware(tmp_path):
    other = make_run(tmp_path, "other", scale={ADD: 2.0}, env={"hardware": "nvidia-h100", "gpu_name": "NVIDIA H100"})
    runs = load_runs([RUNS / "h200-seed", other, RUNS / "cpu-quick"])
    board = leaderboard(compare_table(runs), "train_samples_per_s")
    assert list(board.columns) == ["nvidia-h200", "nvidia-h100", "cpu-amd-epyc-2c"]
    assert board.loc[ADD, "nvidia-h100"] == pytest.approx(2 * board.loc[ADD, "nvidia-h200"])
    assert np.isnan(board.loc[ADD, "cpu-amd-epyc-2c"])  # the CPU run used batch 16: listed, no value
    assert board.loc["add-maxpool-fp32-eager-contig-resident-b16", "cpu-amd-epyc-2c"] > 0


def test_a_run_with_several_seeds_compares_their_mean(tmp_path):
    """A run of --seeds 42,43 holds a row per variant and seed: compare takes their mean."""
    seeded = make_run(tmp_path, "seeded")
    results = pd.read_csv(seeded / "results.csv").assign(seed=42)
    second = results.assign(seed=43, train_samples_per_s=results["train_samples_per_s"] * 3)
    pd.concat([results, second]).to_csv(seeded / "results.csv", index=False)
    table = compare_table(load_runs([RUNS / "h200-seed", seeded]))
    row = table[(table["variant"] == ADD) & (table["metric"] == "train_samples_per_s")]
    assert row["ratio"].iloc[-1] == pytest.approx(2.0)  # (1 + 3) / 2 of the first run's value


@pytest.mark.parametrize("change,message", [
    ("not_a_run", "not a run directory"),
    ("schema", "schema_version 99"),
    ("disjoint", "no variant in common"),
])
def test_bad_input_is_a_one_line_error(tmp_path, change, message):
    first = RUNS / "h200-seed"
    if change == "not_a_run":
        second = tmp_path
    elif change == "schema":
        second = make_run(tmp_path, "future", env={"schema_version": 99})
    else:
        first, second = RUNS / "h200-add", make_run(tmp_path, "seedonly", drop=[ADD])
    with pytest.raises(CompareError, match=message):
        load_runs([first, second])


def test_compare_cli_end_to_end(tmp_path, capsys):
    other = make_run(tmp_path, "other", scale={ADD: 0.8}, env={"hardware": "nvidia-h100", "torch": "2.12.0"})
    assert main(["compare", str(RUNS / "h200-seed"), str(other), "--out", str(tmp_path / "cmp")]) == 0
    text = (tmp_path / "cmp" / "compare.md").read_text()
    assert "**Warning:** software differs (torch)" in text
    assert "- torch: `2.11.0+cu130` vs `2.12.0`" in text
    assert "| slower" in text and "### train samples/s" in text
    assert (tmp_path / "cmp" / "plots" / "compare.png").stat().st_size > 0
    assert main(["compare", str(RUNS / "h200-seed"), str(tmp_path / "missing"), "--out", str(tmp_path / "cmp2")]) == 2
    error = capsys.readouterr().err
    assert error.strip().count("\n") == 0 and "not a run directory" in error
    assert not (tmp_path / "cmp2").exists()  # bad input leaves no folder behind


def write_steps(run, variant, seed, factor=1.0, epochs=3, steps=150, mean_ms=3.5):
    """steps.csv of a short run: per-step times with the autocorrelation real steps have (AR(1))."""
    rng = np.random.default_rng(seed)
    noise = np.zeros(epochs * steps)
    shocks = rng.normal(0, 0.15, len(noise))
    for i in range(1, len(noise)):
        noise[i] = 0.6 * noise[i - 1] + shocks[i]
    ms = (mean_ms + noise) * factor
    pd.DataFrame({"variant": variant, "seed": 42, "repeat": 0, "epoch": np.arange(len(ms)) // steps,
                  "step": np.arange(len(ms)), "data_ms": 0.1 * factor, "compute_ms": ms - 0.1 * factor}) \
        .to_csv(run / "steps.csv", index=False)


def step_verdict(table):
    row = table[(table["variant"] == ADD) & (table["metric"] == "train_samples_per_s") & table["verdict"].notna()]
    return row.iloc[-1]


def test_short_runs_get_a_verdict_from_their_steps(tmp_path):
    """2-3 epochs are too few windows; 3 x 150 steps a side decide, in the words of the gate."""
    base, slow = make_run(tmp_path, "base", source="h200-add"), make_run(tmp_path, "slow", source="h200-add",
                                                                        scale={ADD: 1 / 1.1})
    write_steps(base, ADD, seed=0)
    write_steps(slow, ADD, seed=1, factor=1.1)
    row = step_verdict(compare_table(load_runs([base, slow])))
    assert (row["verdict"], row["method"], row["samples"]) == ("slower", "steps", "450/450")
    assert row["low"] < 1 / 1.1 < row["high"] and row["p"] < 0.01
    same = make_run(tmp_path, "same", source="h200-add")
    write_steps(same, ADD, seed=2)
    assert step_verdict(compare_table(load_runs([base, same])))["verdict"] in ("same", "inconclusive")


def test_step_verdicts_respect_autocorrelation():
    """Pure AR(1) noise: the block bootstrap keeps its false calls rare, Mann-Whitney on the same
    steps (which assumes independent samples) calls many."""
    from reports.stats import compare_samples, compare_series
    block, iid = 0, 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        a, b = (np.convolve(rng.normal(0, 1, 460), 0.8 ** np.arange(10), "valid") + 20 for _ in range(2))
        block += compare_series(a, b, higher_is_better=False).verdict in ("faster", "slower")
        iid += compare_samples(a, b, higher_is_better=False).verdict in ("faster", "slower")
    assert block <= 2 and iid >= 5


def test_thread_count_is_named_as_what_differs(tmp_path):
    """The issue's 1-thread / 2-thread runs: the environment names the thread count."""
    one = make_run(tmp_path, "one", source="cpu-quick", env={"threads": {"intra_op": 1, "inter_op": 2}})
    two = make_run(tmp_path, "two", source="cpu-quick", env={"threads": {"intra_op": 2, "inter_op": 2},
                                                            "command": "python -m bench all --out two"})
    write_compare(load_runs([one, two]), tmp_path / "cmp")
    differs = (tmp_path / "cmp" / "compare.md").read_text().split("## What differs")[1].split("##")[0]
    assert [line for line in differs.splitlines() if line.startswith("- ")] == ["- threads.intra_op: `1` vs `2`"]


def test_fields_only_newer_runs_record_are_not_differences(tmp_path):
    new = make_run(tmp_path, "new", env={"threads": {"intra_op": 16, "inter_op": 16}, "cpu_governor": "performance"})
    write_compare(load_runs([RUNS / "h200-seed", new]), tmp_path / "cmp")
    text = (tmp_path / "cmp" / "compare.md").read_text()
    assert "- no recorded field differs" in text
    assert "Recorded by only some runs (same value where recorded): threads.intra_op, threads.inter_op, cpu_governor" in text


def test_price_gives_dollars_beside_joules(tmp_path):
    """H200 at $3.60/h = $0.001/s: the add net's dollars per million samples and per network."""
    out = tmp_path / "cmp"
    other = make_run(tmp_path, "h100", env={"hardware": "nvidia-h100"})
    assert main(["compare", str(RUNS / "h200-seed"), str(other), "--out", str(out),
                 "--price", "nvidia-h200=3.6"]) == 0
    table = pd.read_csv(out / "compare.csv")
    rows = table[(table["variant"] == ADD) & (table["run"] == "nvidia-h200")].set_index("metric")["value"]
    results = pd.read_csv(RUNS / "h200-seed" / "results.csv").set_index("variant").loc[ADD]
    assert rows["usd_per_million_samples"] == pytest.approx(0.001 * 1e6 / results["train_samples_per_s"])
    assert rows["usd_per_trained_network"] == pytest.approx(0.001 * results["time_to_target_s"])
    assert rows["j_per_sample"] == pytest.approx(1 / results["samples_per_j"])
    text = (out / "compare.md").read_text()
    assert "### $ per 1M train samples" in text and "no price for `nvidia-h100`" in text


def test_bad_price_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(RUNS / "h200-seed"), str(RUNS / "h200-add"), "--out", str(tmp_path / "c"),
              "--price", "nvidia-h200=cheap"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--price" in error and "nvidia-h200=cheap" in error


def test_step_rows_keep_the_timed_steps_with_their_epoch(tmp_path):
    """The worker's per-step times past the warm-up, each with its epoch; the parent appends them."""
    from types import SimpleNamespace
    from bench.parent.matrix import write_steps
    from bench.worker.runner import step_rows
    run = SimpleNamespace(epoch_steps=[3, 3], data_ms=np.arange(6.0), compute_ms=np.arange(6.0) * 10)
    cfg = SimpleNamespace(warmup_steps=2, seed=7, world_size=1)
    rows = step_rows(SimpleNamespace(name="v"), cfg, [run, run])
    assert [(r["repeat"], r["epoch"], r["step"]) for r in rows[:4]] == [(0, 0, 2), (0, 1, 3), (0, 1, 4), (0, 1, 5)]
    assert rows[0]["data_ms"] == 2.0 and rows[0]["compute_ms"] == 20.0 and len(rows) == 8
    write_steps(tmp_path, rows)
    assert list(pd.read_csv(tmp_path / "steps.csv")["step"]) == [2, 3, 4, 5] * 2

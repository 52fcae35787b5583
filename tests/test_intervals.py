"""Mean and 95 % interval over seeds, overlaps between networks, and the seeds section."""

import math

import numpy as np
import pandas as pd
import pytest

from reports.intervals import METRICS, interval, overlaps, seeds_section, summarize_seeds
from reports.results import RESULT_COLUMNS, RESULTS, append_rows, read_table


def test_t_interval_matches_the_textbook_formula():
    values = [99.0, 99.5, 98.5]
    mean, low, high, n = interval(values)
    # mean 99, sample sd 0.5, sem 0.5 / sqrt(3), t(0.975, df 2) = 4.302653
    half = 4.302653 * 0.5 / math.sqrt(3)
    assert (mean, n) == (99.0, 3)
    assert low == pytest.approx(99.0 - half, abs=1e-5) and high == pytest.approx(99.0 + half, abs=1e-5)


def test_interval_edge_cases():
    mean, low, high, n = interval([97.0])
    assert (mean, n) == (97.0, 1) and math.isnan(low) and math.isnan(high)
    assert interval([5.0, 5.0, 5.0]) == (5.0, 5.0, 5.0, 3)
    mean, low, high, n = interval([float("nan"), 10.0, 12.0])  # a seed that never reached the target
    assert (mean, n) == (11.0, 2) and low < 11.0 < high
    assert math.isnan(interval([])[0])
    with pytest.raises(ValueError, match="'t' or 'bootstrap'"):
        interval([1.0, 2.0], method="z")


def test_bootstrap_interval_contains_the_mean_and_is_reproducible():
    values = np.random.default_rng(0).normal(99.0, 0.3, size=10)
    first, second = interval(values, "bootstrap"), interval(values, "bootstrap")
    assert first == second
    mean, low, high, _ = first
    assert low < mean < high and high - low < 1.0


def _rows(accuracies: dict) -> pd.DataFrame:
    rows = []
    for variant, values in accuracies.items():
        for seed, accuracy in zip((42, 43, 44), values):
            rows.append({"variant": variant, "seed": seed, "status": "ok", "accuracy": accuracy, "val_loss": 0.01 * seed,
                         "time_to_target_s": math.nan if seed == 44 else 10.0 + seed,
                         "train_samples_per_s": 1000.0 + seed})
    return pd.DataFrame(rows)


def test_summary_per_variant_and_overlaps():
    rows = _rows({"late": [99.0, 99.2, 99.1], "add": [99.1, 99.3, 99.0], "mul": [95.0, 95.2, 94.9]})
    summary = summarize_seeds(rows)
    assert list(summary["variant"]) == ["late", "add", "mul"] and set(summary["seeds"]) == {3}
    late = summary.iloc[0]
    assert late["accuracy_mean"] == pytest.approx(99.1) and late["accuracy_n"] == 3
    assert late["time_to_target_s_n"] == 2 and late["time_to_target_s_mean"] == pytest.approx(52.5)
    assert all(f"{m}_low" in summary for m in METRICS)
    pairs = overlaps(summary, rows).set_index(["a", "b"])
    assert pairs.at[("late", "add"), "overlap"] and pairs.at[("late", "add"), "p_welch"] > 0.05
    assert not pairs.at[("late", "mul"), "overlap"] and pairs.at[("late", "mul"), "p_welch"] < 0.01
    assert not pairs.at[("add", "mul"), "overlap"]


def test_one_seed_gives_no_interval_and_unknown_overlap():
    rows = _rows({"late": [99.0], "add": [98.0]})
    pairs = overlaps(summarize_seeds(rows), rows)
    assert pairs["overlap"].tolist() == [None]
    section = seeds_section(rows)
    assert "interval n/a" in section and "n/a (one seed)" in section


def test_a_duplicated_seed_is_an_error():
    rows = pd.concat([_rows({"late": [99.0, 99.2]}), _rows({"late": [99.0]})])
    with pytest.raises(ValueError, match="several rows for one seed"):
        summarize_seeds(rows)


def test_seeds_section_from_a_resumed_run_directory(tmp_path):
    columns = RESULT_COLUMNS + ["seed"]
    rows = _rows({"late": [99.0, 99.2, 99.1], "mul": [95.0, 95.2, 94.9]}).to_dict("records")
    append_rows(tmp_path / RESULTS, [{**rows[0], "status": "failed", "accuracy": math.nan}], columns)
    append_rows(tmp_path / RESULTS, rows, columns)  # the resumed run re-ran the failed seed
    table = read_table(tmp_path / RESULTS)  # the last row per (variant, seed) wins
    table = table[table["status"] == "ok"]
    assert len(table) == 6 and set(table["seed"]) == {42, 43, 44}
    section = seeds_section(table)
    assert "99.10 [" in section and "(2 of 3 seeds)" in section
    assert "apart: difference significant" in section

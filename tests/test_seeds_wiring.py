"""Seeds and robustness through the harness: a row per (variant, seed), resume by pair, the
seeds and robustness sections of report.md, and `bench report` rebuilding them."""

from argparse import Namespace

import pandas as pd
import pytest

from bench.parent import matrix as run_module
from bench.commands import report as report_command
from bench.config import RunConfig
from bench.parent.matrix import run_matrix
from bench.worker.robustness import CONDITIONS
from bench.worker.runner import VariantResult, measure
from bench.variants import Variant
from conftest import tiny_config
from reports.results import RESULTS, done_runs


def config(tiny_data, split, **overrides) -> RunConfig:
    """32 training samples, no inference timing or reference loop: seeds and robustness are the point."""
    settings = dict(train_ids=split["train"][:32], infer_iters=0, reference_steps=0)
    return tiny_config(tiny_data, split, **{**settings, **overrides})


def fake_result(variant, cfg):
    """A finished run whose accuracy depends on network and seed, so the seeds differ."""
    accuracy = {"add": 80.0, "mul": 60.0}[variant.arch] + (cfg.seed - 42)
    row = {**variant.settings(), "seed": cfg.seed, "world_size": cfg.world_size, "status": "ok", "error": "",
           "epochs": 1, "train_samples": 16, "val_samples": 16, "loader_form": "resident", "params": 1,
           "val_loss": 0.5 + cfg.seed / 1000, "accuracy": accuracy, "sec_per_epoch": 1.0,
           "train_samples_per_s": 10.0 + cfg.seed, "target_acc": 99.0, "peak_mem_kind": "process_peak_rss",
           "peak_mem_mb": 1.0}
    curves = [{"variant": variant.name, "seed": cfg.seed, "repeat": 0, "epoch": 0, "accuracy": accuracy}]
    return VariantResult(row, curves, [])


def test_a_row_per_variant_and_seed_and_resume_skips_done_pairs(tiny_data, split, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(run_module, "measure", lambda v, cfg, ctx=None: calls.append((v.arch, cfg.seed)) or fake_result(v, cfg))
    variants = [Variant("add", batch_size=8), Variant("mul", batch_size=8)]
    run_matrix(variants, config(tiny_data, split), tmp_path, {}, seeds=[42, 43])
    assert calls == [("add", 42), ("mul", 42), ("add", 43), ("mul", 43)]
    results = pd.read_csv(tmp_path / RESULTS)
    assert sorted(zip(results["arch"], results["seed"])) == [("add", 42), ("add", 43), ("mul", 42), ("mul", 43)]
    assert set(results["world_size"]) == {1}

    calls.clear()
    run_matrix(variants, config(tiny_data, split), tmp_path, {}, resume=True, seeds=[42, 43, 44])
    assert calls == [("add", 44), ("mul", 44)]  # the done (variant, seed) pairs are skipped
    assert len(pd.read_csv(tmp_path / RESULTS)) == 6
    assert done_runs(tmp_path, 42) == {(v.name, s, 1) for v in variants for s in (42, 43, 44)}

    report = (tmp_path / "report.md").read_text()
    assert "## Seeds: mean and 95 % interval" in report
    assert "apart: difference significant" in report  # add's 80-82 % against mul's 60-62 %


def test_one_seed_has_no_seeds_section_and_old_rows_count_as_the_base_seed(tiny_data, split, tmp_path, monkeypatch):
    monkeypatch.setattr(run_module, "measure", lambda v, cfg, ctx=None: fake_result(v, cfg))
    run_matrix([Variant("add", batch_size=8)], config(tiny_data, split), tmp_path, {})
    assert "## Seeds" not in (tmp_path / "report.md").read_text()
    old = pd.read_csv(tmp_path / RESULTS).drop(columns=["seed", "world_size"])
    old.to_csv(tmp_path / RESULTS, index=False)  # a run folder from before --seeds
    assert done_runs(tmp_path, 7) == {(Variant("add", batch_size=8).name, 7, 1)}


def test_robustness_rows_match_the_trained_accuracy_and_report_rebuilds(tiny_data, split, tmp_path):
    cfg = config(tiny_data, split, robustness=True)
    variant = Variant("late", batch_size=8, loader="resident")
    result = measure(variant, cfg)
    rows = pd.DataFrame(result.robustness)
    assert list(rows["condition"]) == [c.name for c in CONDITIONS]
    assert set(rows["variant"]) == {variant.name} and set(rows["seed"]) == {42}
    clean = rows[rows["condition"] == "clean"].iloc[0]
    assert clean["accuracy"] == pytest.approx(result.row["accuracy"])
    assert clean["val_loss"] == pytest.approx(result.row["val_loss"], rel=1e-5)

    run_matrix([variant], cfg, tmp_path, {})
    table = pd.read_csv(tmp_path / "robustness.csv")
    assert len(table) == len(CONDITIONS) and (tmp_path / "plots" / "robustness.png").exists()
    (tmp_path / "report.md").unlink()
    (tmp_path / "plots" / "robustness.png").unlink()
    report_command.run(Namespace(run_dir=[str(tmp_path)], out=None))
    report = (tmp_path / "report.md").read_text()
    assert "## Robustness: accuracy % with one sensor degraded" in report and "lidar_missing" in report
    assert (tmp_path / "plots" / "robustness.png").exists()


def test_seeds_and_robustness_flags(tiny_data, split):
    from bench.cli import parser
    args = parser().parse_args(["all", "--seeds", "42,43", "--no-robustness"])
    assert args.seeds == [42, 43] and args.robustness is False
    assert parser().parse_args(["all"]).robustness is None  # the profile decides

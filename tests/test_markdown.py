"""report.md: harness efficiency with its interval and the flag above 1, and the quick profile's note."""

import json
import re

from bench.variants import Variant
from reports.markdown import write_report
from reports.results import ENV, RESULT_COLUMNS, RESULTS, append_rows

VARIANTS = [Variant("add", batch_size=8), Variant("mul", batch_size=8), Variant("late", batch_size=8)]


def ok_row(variant: Variant, **columns) -> dict:
    return {**variant.settings(), "status": "ok", "error": "", "epochs": 3, "train_samples": 1024, "val_samples": 16,
            "loader_form": "png", "params": 1, "val_loss": 0.5, "accuracy": 75.0, "sec_per_epoch": 1.0,
            "train_samples_per_s": 10.0, "target_acc": 99.0, "peak_mem_kind": "process_peak_rss", "peak_mem_mb": 1.0,
            **columns}


def test_efficiency_intervals_flags_above_one_and_the_quick_profile_note(tmp_path):
    """An efficiency with its interval; one above 1 flagged as a measurement problem and named;
    one without an interval named as unresolved; a quick run says it checks the pipeline only
    and gives the seed's job, another profile does not."""
    (tmp_path / ENV).write_text(json.dumps({"profile": "quick"}))
    append_rows(tmp_path / RESULTS, [
        ok_row(VARIANTS[0], harness_efficiency=0.9, harness_efficiency_ci95_low=0.89, harness_efficiency_ci95_high=0.91,
               harness_efficiency_resolved=True),
        ok_row(VARIANTS[1], harness_efficiency=1.2, harness_efficiency_ci95_low=1.1, harness_efficiency_ci95_high=1.3,
               harness_efficiency_resolved=False),
        ok_row(VARIANTS[2], harness_efficiency=0.95, harness_efficiency_resolved=False),
    ], RESULT_COLUMNS)
    report = write_report(tmp_path).read_text()
    assert re.search(r"\| 0\.90 \(0\.89-0\.91\) +\|", report) and re.search(r"\| 1\.20 \(1\.10-1\.30\) ! +\|", report)
    assert re.search(r"\| 0\.95 +\|", report)
    above = re.search(r"! Above 1 \(([^)]*)\) is a measurement problem", report)
    assert above and above.group(1) == VARIANTS[1].name
    unresolved = re.search(r"Not resolved to 0\.05 [^:]*: ([^.]*)\.", report).group(1).split(", ")
    assert unresolved == [VARIANTS[1].name, VARIANTS[2].name]
    assert "checks that every part of the pipeline works" in report
    assert "does not converge (3 epochs of 1,024 samples at the seed's lr 1e-4)" in report
    assert "`python -m bench all --profile seed`" in report
    (tmp_path / ENV).write_text(json.dumps({"profile": "seed"}))
    assert "does not converge" not in write_report(tmp_path).read_text()

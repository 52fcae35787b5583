"""Crash-safe tables: results.csv cut at every byte offset of its last row is read without that
row (with a warning), reported, and resumed by re-running exactly that variant."""

import shutil
import warnings

import pytest
import torch

from bench.parent import matrix as run_module
from bench.config import RunConfig
from bench.parent.matrix import run_matrix
from bench.worker.runner import VariantResult
from bench.variants import Variant
from reports.markdown import write_report
from reports.results import RESULT_COLUMNS, RESULTS, append_rows, done_variants, read_table

VARIANTS = [Variant("add", batch_size=8), Variant("mul", batch_size=8)]


def ok_row(variant: Variant) -> dict:
    return {**variant.settings(), "status": "ok", "error": "", "epochs": 1, "train_samples": 16, "val_samples": 16,
            "loader_form": "png", "params": 1, "val_loss": 0.5, "accuracy": 75.0, "sec_per_epoch": 1.0,
            "train_samples_per_s": 10.0, "target_acc": 99.0, "peak_mem_kind": "process_peak_rss", "peak_mem_mb": 1.0}


@pytest.fixture
def full_run(tmp_path):
    run = tmp_path / "full"
    run.mkdir()
    for variant in VARIANTS:
        append_rows(run / RESULTS, [ok_row(variant)], RESULT_COLUMNS)
    return run


def torn_copies(full_run, tmp_path):
    """(offset, run dir) with results.csv cut at each byte offset inside its last row."""
    data = (full_run / RESULTS).read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    for offset in range(start, len(data)):
        run = tmp_path / f"cut{offset}"
        shutil.copytree(full_run, run)
        (run / RESULTS).write_bytes(data[:offset])
        yield offset, run


def test_rows_are_whole_lines_even_with_newlines_in_errors(tmp_path):
    path = tmp_path / RESULTS
    append_rows(path, [{**ok_row(VARIANTS[0]), "status": "failed", "error": "line one\nline two"}], RESULT_COLUMNS)
    assert path.read_bytes().count(b"\n") == 2
    assert read_table(path)["error"].tolist() == ["line one line two"]


def test_cut_at_every_offset_drops_the_row_reports_and_appends_cleanly(full_run, tmp_path):
    last = VARIANTS[1].name
    for offset, run in torn_copies(full_run, tmp_path):
        start_of_row = offset == (full_run / RESULTS).read_bytes().rstrip(b"\n").rfind(b"\n") + 1
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            table = read_table(run / RESULTS)
            assert done_variants(run) == {VARIANTS[0].name}, offset
        assert table["variant"].tolist() == [VARIANTS[0].name], offset
        assert start_of_row or any("torn last line" in str(w.message) for w in caught), offset
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = write_report(run).read_text()
            assert VARIANTS[0].name in report and last not in report, offset
            append_rows(run / RESULTS, [ok_row(VARIANTS[1])], RESULT_COLUMNS)  # what the resumed variant writes
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the file is whole again: no torn line left to warn about
            assert read_table(run / RESULTS)["variant"].tolist() == [v.name for v in VARIANTS], offset
        shutil.rmtree(run)


def test_resume_reruns_the_torn_variant(full_run, tmp_path, tiny_data, monkeypatch):
    """The real resume path (run_matrix) at the first, a middle and the last offset of the row."""
    cuts = list(torn_copies(full_run, tmp_path))
    cfg = RunConfig(data_root=str(tiny_data), train_ids=[], val_ids=[], device=torch.device("cpu"), progress=False)
    for offset, run in (cuts[0], cuts[len(cuts) // 2], cuts[-1]):
        calls = []
        monkeypatch.setattr(run_module, "measure", lambda v, cfg, ctx=None: calls.append(v.name) or
                            VariantResult(ok_row(v), [], []))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert run_matrix(VARIANTS, cfg, run, {}, resume=True) == 0
        assert calls == [VARIANTS[1].name], offset
        assert read_table(run / RESULTS)["variant"].tolist() == [v.name for v in VARIANTS]

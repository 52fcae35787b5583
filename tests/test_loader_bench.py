"""`python -m bench loaders` end to end on a tiny dataset, and what it writes when loaders fail."""

import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.commands import loaders as loaders_command
from conftest import bench


def test_loaders_command_times_every_loader(tiny_data, tmp_path):
    out = tmp_path / "loaders"
    done = bench("loaders", "--data", tiny_data, "--batch-size", "8", "--epochs", "1", "--workers", "0", "--out", out)
    table = pd.read_csv(out / "loaders.csv")
    assert list(table["loader"]) == ["torch", "resident", "dali"]
    ok = table[table["status"] == "ok"]
    assert {"torch", "resident"} <= set(ok["loader"]) and (ok["samples_per_s"] > 0).all()
    assert ok.loc[ok["loader"] == "torch", "ratio_to_torch"].item() == pytest.approx(1.0)
    assert done.returncode == (0 if len(ok) == 3 else 1)  # DALI missing: recorded, the others still timed
    assert "ratio_to_torch" in (out / "loaders.md").read_text()


def test_every_loader_failing_still_writes_both_files(tiny_data, tmp_path, monkeypatch):
    def broken(kind, *args, **kwargs):
        raise RuntimeError(f"{kind} cannot start\nsecond line of a traceback")

    monkeypatch.setattr(loaders_command, "time_loader", broken)
    out = tmp_path / "loaders"
    assert main(["loaders", "--data", str(tiny_data), "--loader", "torch,resident", "--out", str(out)]) == 1
    table = pd.read_csv(out / "loaders.csv")
    assert list(table["status"]) == ["failed", "failed"]
    text = (out / "loaders.md").read_text()
    assert "No loader finished" in text and "torch cannot start" in text and "second line" not in text


def test_a_failed_loader_keeps_the_rows_of_the_others(tiny_data, tmp_path, monkeypatch):
    real = loaders_command.time_loader

    def resident_fails(kind, *args, **kwargs):
        if kind == "resident":
            raise ValueError("")  # an empty message still gets a one-line error: its type
        return real(kind, *args, **kwargs)

    monkeypatch.setattr(loaders_command, "time_loader", resident_fails)
    out = tmp_path / "loaders"
    assert main(["loaders", "--data", str(tiny_data), "--loader", "torch,resident", "--batch-size", "8",
                 "--epochs", "1", "--workers", "0", "--out", str(out)]) == 1
    table = pd.read_csv(out / "loaders.csv").set_index("loader")
    assert table.loc["torch", "status"] == "ok" and table.loc["torch", "samples_per_s"] > 0
    assert table.loc["resident", "error"] == "ValueError"
    text = (out / "loaders.md").read_text()
    assert "| torch" in text and "## Failed loaders" in text


def test_report_rebuilds_loaders_md(tmp_path, tiny_data, monkeypatch):
    out = tmp_path / "loaders"
    monkeypatch.setattr(loaders_command, "time_loader", lambda kind, *a, **k: (_ for _ in ()).throw(RuntimeError("x")))
    main(["loaders", "--data", str(tiny_data), "--loader", "torch", "--out", str(out)])
    (out / "loaders.md").unlink()
    assert main(["report", str(out)]) == 0
    assert "No loader finished" in (out / "loaders.md").read_text()


def test_report_renders_an_h200_loaders_run(tmp_path):
    run = shutil.copytree(Path(__file__).parent / "fixtures" / "results" / "h200-loaders", tmp_path / "loaders")
    assert main(["report", str(run)]) == 0
    text = (run / "loaders.md").read_text()
    assert "# Loaders on cuda:0" in text and "4800 samples" in text
    assert "| resident | resident |      142,685.92 |            57.21 |" in text

"""`python -m bench loaders` end to end on a tiny dataset."""

import pandas as pd
import pytest

from test_cli import bench


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

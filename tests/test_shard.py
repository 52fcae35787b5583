"""`bench all --shard I/N` splits the matrix the same way on every machine; `bench report --out`
merges the shards' run directories and refuses parts of different runs."""

import argparse
import json
import random
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.options import shard_of, shard_spec
from bench.variants import build_matrix

RUNS = Path(__file__).parent / "fixtures" / "results"
SETTINGS = {"epochs": 20, "profile": "seed", "seed": 42, "data": "abc", "split": "def", "code": "f552ed5"}


def full_matrix():
    return build_matrix(["late", "concat", "add", "mul"], ["maxpool", "strided"], ["fp32", "bf16"], ["none"],
                        ["contiguous"], [32], ["resident"], ["seed"])


@pytest.mark.parametrize("count", [1, 3, 4, 16])
def test_shards_are_disjoint_cover_the_matrix_and_are_balanced(count):
    variants = full_matrix()
    parts = [shard_of(variants, (index, count)) for index in range(count)]
    names = [v.name for part in parts for v in part]
    assert sorted(names) == sorted(v.name for v in variants) and len(set(names)) == len(names)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_every_machine_computes_the_same_split():
    """The part depends on the variant names only, not on the order the matrix was built in."""
    variants = full_matrix()
    shuffled = random.Random(0).sample(variants, len(variants))
    for index in range(4):
        assert {v.name for v in shard_of(variants, (index, 4))} == {v.name for v in shard_of(shuffled, (index, 4))}


@pytest.mark.parametrize("text", ["4/4", "-1/4", "1/0", "1", "a/b", "1/2/3", ""])
def test_bad_shard_is_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="expected I/N with 0 <= I < N"):
        shard_spec(text)


def test_shard_on_the_command_line(capsys):
    assert main(["list", "--arch", "add,mul", "--amp", "--shard", "1/3"]) == 0
    assert capsys.readouterr().out.split() == ["add-maxpool-fp32-eager-contig-resident-b16"]
    with pytest.raises(SystemExit) as exit_info:
        main(["list", "--shard", "4/4"])
    assert exit_info.value.code == 2
    assert main(["list", "--arch", "add", "--shard", "1/2"]) == 2  # more shards than variants
    assert "this part of the matrix is empty" in capsys.readouterr().err


def make_shards(tmp_path, count=2, env=None):
    """The H200 fixture run cut into `count` shards by variant, as `--shard I/count` would write them."""
    source = RUNS / "h200-seed"
    results = pd.read_csv(source / "results.csv", dtype=str, keep_default_na=False)
    curves = pd.read_csv(source / "curves.csv", dtype=str, keep_default_na=False)
    base_env = {**json.loads((source / "env.json").read_text()), "schema_version": 2, "settings": SETTINGS}
    names = sorted(results["variant"])
    shards = []
    for index in range(count):
        mine = names[index::count]
        shard = tmp_path / f"shard{index}"
        shard.mkdir()
        results[results["variant"].isin(mine)].to_csv(shard / "results.csv", index=False)
        curves[curves["variant"].isin(mine)].to_csv(shard / "curves.csv", index=False)
        shard_env = {**base_env, **((env or {}).get(index, {}))}
        (shard / "env.json").write_text(json.dumps(shard_env))
        shards.append(shard)
    return shards


def test_report_merges_shards_into_one_run(tmp_path, capsys):
    shards = make_shards(tmp_path)
    out = tmp_path / "merged"
    assert main(["report", *map(str, shards), "--out", str(out)]) == 0
    merged = pd.read_csv(out / "results.csv", dtype=str, keep_default_na=False)
    original = pd.read_csv(RUNS / "h200-seed" / "results.csv", dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(merged.sort_values("variant").reset_index(drop=True),
                                  original.sort_values("variant").reset_index(drop=True))
    assert len(pd.read_csv(out / "curves.csv")) == len(pd.read_csv(RUNS / "h200-seed" / "curves.csv"))
    assert json.loads((out / "env.json").read_text())["shards"] == [str(s) for s in shards]
    report = (out / "report.md").read_text()
    assert all(name in report for name in original["variant"])


@pytest.mark.parametrize("env, message", [
    ({1: {"settings": {**SETTINGS, "epochs": 3}}}, "epochs 20 vs 3"),
    ({1: {"hardware": "nvidia-h100", "gpu_name": "NVIDIA H100"}}, "hardware 'nvidia-h200' vs 'nvidia-h100'"),
    ({1: {"torch": "2.12.0"}}, "torch"),
])
def test_shards_of_different_runs_are_refused(tmp_path, capsys, env, message):
    shards = make_shards(tmp_path, env=env)
    out = tmp_path / "merged"
    assert main(["report", *map(str, shards), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "not a shard of the same run" in error and message in error
    assert not out.exists() and not list(tmp_path.glob(".merged*"))


def test_overlapping_shards_and_unsettled_runs_are_refused(tmp_path, capsys):
    first, second = make_shards(tmp_path)
    shutil.copy(first / "results.csv", second / "results.csv")
    assert main(["report", str(first), str(second), "--out", str(tmp_path / "m1")]) == 2
    assert "shards must be disjoint" in capsys.readouterr().err
    assert main(["report", str(RUNS / "h200-seed"), str(first), "--out", str(tmp_path / "m2")]) == 2
    assert "no recorded settings" in capsys.readouterr().err
    assert main(["report", str(first), str(second)]) == 2
    assert "needs --out" in capsys.readouterr().err

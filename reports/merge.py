"""Shards of one matrix (`bench all --shard I/N` on N machines) merged into one run directory.

Shards merge only when they are parts of one run: the same recorded settings (epochs, profile,
seed, data, split, code) and the same hardware and software, and no (variant, seed, world size)
in two of them. The tables are joined row for row as text, so every cell reads back as its shard
wrote it; nvml.csv stays with each shard (its timeline is one machine's clock; the energy columns
of the rows carry what it measured). The merged folder is built aside and renamed into place, so
a refused or failed merge leaves nothing behind.
"""

import os
import shutil
from pathlib import Path

import pandas as pd

from reports.results import CURVES, ENV, INFERENCE, RESULTS, STEPS, append_rows, read_env, read_table, write_env
from reports.robustness_report import ROBUSTNESS

TABLES = (RESULTS, CURVES, INFERENCE, STEPS, ROBUSTNESS)
SAME_MACHINE = ("schema_version", "hardware", "gpu_name", "driver", "cuda", "torch", "dali", "python")
RUN_KEY = ("variant", "seed", "world_size")


def _check_alike(paths: list[Path], envs: list[dict]) -> None:
    """ValueError naming the first shard that is not a part of the first shard's run."""
    first, base = paths[0], envs[0]
    for path, env in zip(paths, envs):
        if "settings" not in env:
            raise ValueError(f"{path / ENV}: no recorded settings, so it cannot be checked to be a shard of "
                             f"the same run (made before settings were recorded?)")
    for path, env in zip(paths[1:], envs[1:]):
        changed = [f"{key} {base['settings'].get(key)!r} vs {env['settings'].get(key)!r}"
                   for key in dict.fromkeys([*base["settings"], *env["settings"]])
                   if base["settings"].get(key) != env["settings"].get(key)]
        changed += [f"{key} {base.get(key)!r} vs {env.get(key)!r}" for key in SAME_MACHINE
                    if base.get(key) != env.get(key)]
        if changed:
            raise ValueError(f"{path}: not a shard of the same run as {first} ({'; '.join(changed)})")


def _text_table(path: Path) -> pd.DataFrame:
    """A run table as text cells exactly as written (no torn last line)."""
    table = read_table(path, key=None)
    return table if table.empty else pd.read_csv(path, dtype=str, keep_default_na=False, nrows=len(table))


def _check_disjoint(paths: list[Path]) -> None:
    seen = {}
    for path in paths:
        results = _text_table(path / RESULTS)
        keys = [k for k in RUN_KEY if k in results]
        for key in map(tuple, results[keys].itertuples(index=False)) if len(results) else []:
            if key in seen:
                raise ValueError(f"{path}: variant {key[0]} is also in {seen[key]} (shards must be disjoint: "
                                 "the same --shard N and different I)")
            seen[key] = path


def merge_runs(run_dirs: list, out: str | Path) -> Path:
    """Merges the shards' run directories into `out` (env.json of the first, with the shards listed)."""
    paths, out = [Path(p) for p in run_dirs], Path(out)
    for path in paths:
        if not (path / RESULTS).is_file() or not (path / ENV).is_file():
            raise ValueError(f"{path}: not a run directory (expected {RESULTS} and {ENV})")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out}: already exists and is not empty; choose a new folder for the merged run")
    envs = [read_env(path) for path in paths]
    _check_alike(paths, envs)
    _check_disjoint(paths)
    building = out.with_name(f".{out.name}.merging")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    try:
        write_env(building, {**envs[0], "shards": [str(p) for p in paths]})
        for name in TABLES:
            parts = [_text_table(p / name) for p in paths if (p / name).is_file()]
            parts = [part for part in parts if len(part.columns)]
            if not parts:
                continue
            columns = list(parts[0].columns)
            if any(list(part.columns) != columns for part in parts):
                raise ValueError(f"{name}: the shards' columns differ (made by different fusionbench versions)")
            append_rows(building / name, pd.concat(parts).to_dict("records"), columns)
        if out.exists():
            out.rmdir()
        os.replace(building, out)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return out

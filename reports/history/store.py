"""The history store: every result of every commit and machine, as plain JSON-lines files.

A store is a folder a team can commit or keep as a CI artifact:

    results-<hardware key>.jsonl   one record per (hardware, commit, time, case, metric)
    envs.jsonl                     each environment once: {"id", "env"} (env.json content, or a
                                   pytest-benchmark JSON's machine_info and commit_info)

A record holds the point's value (the median of its samples), its samples where the source has
several (per-epoch training windows, benchmark rounds, training seeds), the environment's id and
the source's path relative to the store (so a store committed beside results/ keeps its links).
Its `key` hashes what the result is (hardware, case, metric, commit, time, value, samples), not
where it was read from, so adding the same result twice, from any copy, changes nothing.

Inputs are all read and checked before anything is written; each file is then replaced whole
(temp file + os.replace), so a malformed input or a crash never leaves a file half-written.
"""

import hashlib
import json
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from reports.compare import METRICS
from reports.results import CURVES, ENV, READABLE_VERSIONS, RESULTS, read_table

ENVS = "envs.jsonl"
ROUND_METRIC = "round_s"  # a pytest-benchmark round, seconds (lower is better)
HIGHER_IS_BETTER = {**{metric: higher for metric, (_, higher) in METRICS.items()}, ROUND_METRIC: False}
LABELS = {**{metric: label for metric, (label, _) in METRICS.items()}, ROUND_METRIC: "benchmark round s"}
# `git describe --always --dirty` (bench.parent.rundir.code_version): [tag-N-g]<sha>[-dirty]
DESCRIBE = re.compile(r"(?:^|-g)([0-9a-f]{7,40})(?:-dirty)?$")


class HistoryError(ValueError):
    """Bad history input; its message is the one-line error the user sees."""


def _hash(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _finite(values) -> list[float]:
    return [float(v) for v in pd.to_numeric(pd.Series(values, dtype=object), errors="coerce") if math.isfinite(v)]


def commit_of(describe: str) -> str:
    """The commit id in a `git describe` string ("v1-3-gabc1234-dirty" -> "abc1234"); a bare tag
    stays as it is; "" when the run recorded none."""
    if not describe or describe == "unknown":
        return ""
    match = DESCRIBE.search(describe)
    return match.group(1) if match else describe.removesuffix("-dirty")


def _record(point: dict, values: list[float]) -> dict | None:
    """A record of `point` (hardware, case, metric, commit, ...) with its samples; None without any."""
    if not values:
        return None
    record = {**point, "value": float(np.median(values)), "samples": values if len(values) > 1 else None}
    what = {k: record[k] for k in ("hardware", "case", "metric", "commit", "time", "value", "samples")}
    return {"key": _hash(what), **record}


def run_dir_records(path: Path) -> tuple[dict, list[dict]]:
    """(env, records) of a run directory: each ok variant's metrics; training throughput's samples
    are its per-epoch windows (curves.csv), the others' its training seeds' values."""
    if not (path / RESULTS).is_file() or not (path / ENV).is_file():
        raise HistoryError(f"{path}: not a run directory (expected {RESULTS} and {ENV})")
    try:
        env = json.loads((path / ENV).read_text())
        results = read_table(path / RESULTS)
        curves = read_table(path / CURVES, key=None)
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise HistoryError(f"{path}: unreadable run directory ({' '.join(str(error).split())})") from None
    if not isinstance(env, dict):
        raise HistoryError(f"{path / ENV}: expected a JSON object")
    if env.get("schema_version", 1) not in READABLE_VERSIONS:
        raise HistoryError(f"{path / ENV}: schema_version {env['schema_version']}, this fusionbench reads "
                           f"{', '.join(map(str, READABLE_VERSIONS))}")
    if "variant" not in results or "status" not in results:
        raise HistoryError(f"{path / RESULTS}: expected the columns variant and status")
    hardware = env.get("hardware") or "unknown"
    describe = str((env.get("settings") or {}).get("code", ""))
    base = {"hardware": hardware, "commit": commit_of(describe), "commit_time": None, "time": env.get("started")}
    ok = results[results["status"] == "ok"]
    records = []
    for variant, rows in ok.groupby("variant", sort=False):
        windows = curves.loc[curves["variant"] == variant, "train_samples_per_s"] \
            if {"variant", "train_samples_per_s"} <= set(curves) else []
        for metric in METRICS:
            if metric not in rows:
                continue
            values = _finite(windows) if metric == "train_samples_per_s" and len(_finite(windows)) else \
                _finite(rows[metric])
            record = _record({**base, "case": variant, "metric": metric}, values)
            if record:
                records.append(record)
    return env, records


def benchmark_records(path: Path) -> tuple[dict, list[dict]]:
    """(env, records) of a pytest-benchmark JSON: each case's raw rounds, keyed by the hardware key
    the suite records in extra_info (tests/test_benchmarks.py)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HistoryError(f"{path}: not a readable pytest-benchmark JSON ({error})") from None
    benchmarks = doc.get("benchmarks") if isinstance(doc, dict) else None
    if not benchmarks or not isinstance(benchmarks, list):
        raise HistoryError(f"{path}: no benchmarks (expected pytest-benchmark JSON from --benchmark-json)")
    commit = doc.get("commit_info") or {}
    env = {"machine_info": doc.get("machine_info") or {}, "commit_info": commit,
           "pytest_benchmark": doc.get("version", "")}
    base = {"commit": str(commit.get("id", "")), "commit_time": commit.get("time"), "time": doc.get("datetime")}
    records = []
    for bench in benchmarks:
        rounds = (bench.get("stats") or {}).get("data") if isinstance(bench, dict) else None
        if not isinstance(rounds, list) or "fullname" not in bench:
            raise HistoryError(f"{path}: {bench.get('fullname') if isinstance(bench, dict) else bench!r} has no raw "
                               "rounds (record with --benchmark-json, or --benchmark-save-data)")
        hardware = (bench.get("extra_info") or {}).get("hardware_key") or "unknown"
        record = _record({**base, "hardware": hardware, "case": bench["fullname"], "metric": ROUND_METRIC},
                         _finite(rounds))
        if record:
            records.append(record)
    return env, records


def read_input(path: str | Path, resolve=None) -> tuple[dict, list[dict]]:
    """(env, records) of one run directory or benchmark JSON. `resolve(commit)` may return the
    commit's (full id, commit time), e.g. from git; None leaves what the input recorded."""
    path = Path(path)
    if path.is_dir():
        env, records = run_dir_records(path)
    elif path.is_file():
        env, records = benchmark_records(path)
    else:
        raise HistoryError(f"{path}: no such run directory or benchmark JSON")
    if not records:
        raise HistoryError(f"{path}: no finished result to add (no ok variant, or no benchmark rounds)")
    found = resolve(records[0]["commit"]) if resolve and records[0]["commit"] else None
    for record in records:
        if found:
            record["commit"], record["commit_time"] = found[0], record["commit_time"] or found[1]
        record["source"] = str(path)
        report = path / "report.md"
        record["report"] = str(report) if report.is_file() else str(path)
    return env, records


def _store_file(store: Path, hardware: str) -> Path:
    return store / f"results-{re.sub(r'[^A-Za-z0-9._-]', '_', hardware)}.jsonl"


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise HistoryError(f"{path} line {number}: not a JSON record ({error.msg})") from None
        if not isinstance(row, dict) or "key" not in row and "id" not in row:
            raise HistoryError(f"{path} line {number}: expected a history record")
        rows.append(row)
    return rows


def _write_atomic(path: Path, rows: list[dict]) -> None:
    """The whole file at once: a temp file beside it, then os.replace, so readers never see half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as f:
        f.writelines(json.dumps(row, sort_keys=True) + "\n" for row in rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _relative(path: str, store: Path) -> str:
    return os.path.relpath(Path(path).resolve(), store.resolve())


def add(store: str | Path, paths: list, resolve=None) -> dict[str, int]:
    """Adds every input to the store; returns {input path: records new to the store}. Every input
    is read and checked first, so one bad file adds nothing."""
    store = Path(store)
    inputs = [(str(p), *read_input(p, resolve)) for p in paths]
    added_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    envs = {row["id"]: row for row in _read_jsonl(store / ENVS)}
    by_file: dict[Path, list[dict]] = {}
    keys: dict[Path, set[str]] = {}
    counts = {}
    for path, env, records in inputs:
        env_id = _hash(env)
        envs.setdefault(env_id, {"id": env_id, "env": env})
        counts[path] = 0
        for record in records:
            target = _store_file(store, record["hardware"])
            if target not in by_file:
                by_file[target] = _read_jsonl(target)
                keys[target] = {row["key"] for row in by_file[target]}
            if record["key"] in keys[target]:
                continue
            keys[target].add(record["key"])
            by_file[target].append({**record, "env": env_id, "added": added_at,
                                    "source": _relative(record["source"], store),
                                    "report": _relative(record["report"], store)})
            counts[path] += 1
    if sum(counts.values()):
        store.mkdir(parents=True, exist_ok=True)
        _write_atomic(store / ENVS, list(envs.values()))  # first: a record never names a missing env
        for target, rows in by_file.items():
            _write_atomic(target, rows)
    return counts


def load(store: str | Path) -> tuple[pd.DataFrame, dict[str, dict]]:
    """(records, {env id: env}) of a store; records in the order they were added."""
    store = Path(store)
    if not store.is_dir():
        raise HistoryError(f"{store}: no history store (add results with `python -m bench history add`)")
    envs = {row["id"]: row["env"] for row in _read_jsonl(store / ENVS)}
    rows = [row for path in sorted(store.glob("results-*.jsonl")) for row in _read_jsonl(path)]
    records = pd.DataFrame(rows)
    if records.empty:
        raise HistoryError(f"{store}: the history store holds no records")
    missing = set(records["env"]) - set(envs)
    if missing:
        raise HistoryError(f"{store / ENVS}: no environment {sorted(missing)[0]} named by a record")
    return records.sort_values("added", kind="stable").reset_index(drop=True), envs

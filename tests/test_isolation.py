"""Each variant in its own process: results and exceptions handed back, a worker that crashes,
exits, hangs or is interrupted recorded with its cause and ended, memory peaks that are the
variant's own, one clock for parent and workers, the decoded split mapped rather than decoded
again, and under torchrun a failure on one rank failing the variant on every rank.

The workers' targets live in tests/isolation_workers.py; most import no torch, so these tests
start few processes that cost seconds."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import isolation_workers
from bench.instruments import memory
from bench.parent.launcher import Isolation, WorkerDied, Workers, run_in_worker
from bench.parent.matrix import run_matrix
from bench.variants import Variant
from conftest import tiny_config
from loaders.dataset import decode_split
from loaders.resident import load_decoded, save_decoded
from reports.results import CURVES, RESULTS

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


@pytest.fixture(autouse=True)
def importable_targets(monkeypatch):
    """Workers import their targets from tests/isolation_workers.py by name."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def assert_ended(pid_file: Path) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


def test_a_worker_hands_back_its_value_or_its_exception():
    assert run_in_worker("isolation_workers:double", 21) == 42
    with pytest.raises(ValueError, match="bad shard"):  # the type survives: DatasetError still stops a run
        run_in_worker("isolation_workers:raise_value_error", "bad shard")


def test_a_segfault_is_named_and_its_stderr_reaches_the_console(capfd):
    with pytest.raises(WorkerDied, match=r"killed by SIGSEGV; its stderr ended: about to touch a bad address"):
        run_in_worker("isolation_workers:segfault")
    assert "about to touch a bad address" in capfd.readouterr().err


def test_an_exit_code_is_named_with_the_last_lines_of_stderr():
    with pytest.raises(WorkerDied, match=r"exited with code 3 .*first line \| CUDA error: an illegal memory access"):
        run_in_worker("isolation_workers:exit_with", 3)


def test_a_hung_worker_is_killed_at_the_time_limit(tmp_path):
    with pytest.raises(WorkerDied, match=r"ran past --variant-timeout 3 s and was killed"):
        run_in_worker("isolation_workers:hang", str(tmp_path / "pid"), timeout_s=3)
    assert_ended(tmp_path / "pid")


def test_ctrl_c_in_the_parent_ends_the_worker(tmp_path):
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 3)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_in_worker("isolation_workers:hang", str(tmp_path / "pid"))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert_ended(tmp_path / "pid")


def test_each_job_gets_its_own_process_started_ahead():
    with Workers(jobs=2, preload="json") as workers:  # the matrix preloads bench.worker.runner
        pids = [workers.run("os:getpid"), workers.run("os:getpid")]
    assert len(set(pids)) == 2 and os.getpid() not in pids


def test_a_spare_that_died_while_it_waited_is_named():
    with Workers(jobs=1, preload="no_such_module") as workers:
        with pytest.raises(WorkerDied, match=r"exited with code 1 .*No module named 'no_such_module'"):
            workers.run("os:getpid")


def test_a_workers_perf_counter_is_the_parents_clock():
    """The NVML timeline is cut in the parent at times a worker took: one clock (CLOCK_MONOTONIC)."""
    before = time.perf_counter()
    theirs = run_in_worker("isolation_workers:clock")
    assert before < theirs < time.perf_counter()


def test_a_large_variant_before_a_small_one_leaves_its_peak_unchanged():
    """The big variant leaves 512 MB held in its process (as a caching allocator keeps its pool).
    In one process the small variant's peak RSS carries all of it; in fresh workers the small
    one's peak after the big one is the peak it has alone (two fresh processes doing the same
    work differ by a few MB; the band is 64, the effect 512)."""
    big, small = (512, 0), (0, 32)  # (MB held after, MB worked with)
    alone = run_in_worker("isolation_workers:variant_peak", *small)
    run_in_worker("isolation_workers:variant_peak", *big)
    after_big = run_in_worker("isolation_workers:variant_peak", *small)
    assert abs(after_big - alone) < 64
    try:  # the same sequence in this process, to show what the test would catch
        here_alone = isolation_workers.variant_peak(*small)
        isolation_workers.variant_peak(*big)
        here_after_big = isolation_workers.variant_peak(*small)
    finally:
        isolation_workers.POOL.clear()
    assert here_after_big - here_alone > 400


class FakeCudaAllocator:
    """torch.cuda's peak semantics: a reset starts the peak at what is reserved now, and only
    empty_cache() returns the reserved blocks nobody uses."""

    def __init__(self, reserved_mb: float):
        self.allocated, self.reserved = 0.0, reserved_mb
        self.peak_reserved = reserved_mb

    def empty_cache(self):
        self.reserved = self.allocated

    def reset_peak_memory_stats(self, device=None):
        self.peak_reserved = self.reserved

    def allocate(self, mb: float):
        self.allocated += mb
        self.reserved = max(self.reserved, self.allocated)
        self.peak_reserved = max(self.peak_reserved, self.reserved)


def test_without_isolation_the_reserved_peak_does_not_carry_over(monkeypatch):
    allocator = FakeCudaAllocator(reserved_mb=4000)  # what a large variant left cached
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", allocator.empty_cache)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", allocator.reset_peak_memory_stats)
    memory.reset_peak(torch.device("cuda", 0))
    allocator.allocate(300)  # the small variant
    assert allocator.peak_reserved == 300


def test_the_decoded_split_maps_back_identical(tiny_data, split, tmp_path):
    ids = split["train"][:6]
    decoded = decode_split(tiny_data, ids, workers=1)
    mapped = load_decoded(save_decoded(decoded, tmp_path / "train"))
    assert set(mapped) == set(decoded)
    for name, tensor in decoded.items():
        assert torch.equal(mapped[name], tensor), name


def test_a_crashed_variant_is_a_failed_row_and_the_next_runs_in_a_fresh_process(tiny_data, split, tmp_path):
    """mul segfaults; add then runs in a fresh worker that maps the split the parent decoded."""
    variants = [Variant("mul", batch_size=8, loader="resident"), Variant("add", batch_size=8, loader="resident")]
    isolation = Isolation(target="isolation_workers:measure_or_crash")
    assert run_matrix(variants, tiny_config(tiny_data, split), tmp_path, {}, isolation=isolation) == 1
    results = pd.read_csv(tmp_path / RESULTS)
    assert list(results["status"]) == ["failed", "ok"]
    assert "WorkerDied: worker killed by SIGSEGV" in results.loc[0, "error"]
    assert "about to touch a bad address" in results.loc[0, "error"]
    assert "no CUDA" in results.loc[1, "nvml_note"]  # the NVML columns are the parent's
    assert "## Failed variants" in (tmp_path / "report.md").read_text()


def test_a_failure_on_rank_1_fails_the_variant_on_every_rank_and_the_run_goes_on(tiny_data, split, tmp_path):
    """add raises on rank 1 while rank 0 waits for it in an all-reduce: torchrun's agent ends rank
    0 at once (the 120 s limit would name itself in the error otherwise); mul runs in a fresh group."""
    variants = [Variant("add", batch_size=8), Variant("mul", batch_size=8)]
    isolation = Isolation(target="isolation_workers:fail_on_rank1", timeout_s=120, nproc=2)
    assert run_matrix(variants, tiny_config(tiny_data, split, world_size=2), tmp_path, {}, isolation=isolation) == 1
    results = pd.read_csv(tmp_path / RESULTS)
    assert list(results["status"]) == ["failed", "ok"]
    assert results.loc[0, "error"] == "ValueError: class prior check failed on this rank's shard"
    assert results.loc[1, "samples_trained"] == 2 and results.loc[1, "world_size"] == 2  # both ranks reduced


def test_bench_all_isolated_trains_a_variant_in_a_worker(tiny_data, tmp_path):
    """The real measurement path in a worker, end to end through the CLI."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "bench", "all", "--isolate", "--variant-timeout", "500", "--device",
                           "cpu", "--data", str(tiny_data), "--arch", "add", "--epochs", "1", "--batch-size", "8",
                           "--out", "run", "--warmup-steps", "1", "--no-progress", "--workers", "0", "--no-robustness"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "each variant in a fresh process" in done.stdout
    results = pd.read_csv(tmp_path / "run" / RESULTS)
    assert list(results["status"]) == ["ok"] and results.loc[0, "peak_mem_mb"] > 0
    assert results.loc[0, "train_samples_per_s"] > 0 and "no CUDA" in results.loc[0, "nvml_note"]
    assert len(pd.read_csv(tmp_path / "run" / CURVES)) == 1


def test_variant_timeout_needs_isolation(tiny_data, tmp_path):
    from conftest import bench
    done = bench("all", "--no-isolate", "--variant-timeout", "10", "--device", "cpu", "--data", tiny_data, "--arch",
                 "add", "--out", tmp_path / "run", cwd=tmp_path)
    assert done.returncode == 2 and "--variant-timeout 10: expected seconds above 0, and isolation" in done.stderr
    assert not (tmp_path / "run").exists()

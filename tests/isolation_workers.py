"""Worker targets for tests/test_isolation.py (`python -m bench.worker` imports them by name):
workers that succeed, raise, crash, exit, hang, hold memory, or fail on one rank only. The
first few import no torch, so they start in milliseconds."""

import os
import signal
import sys
import time
from pathlib import Path

POOL = []  # memory a "variant" leaves behind in its process, as a caching allocator's pool does


def double(x):
    return 2 * x


def raise_value_error(message):
    raise ValueError(message)


def segfault():
    print("about to touch a bad address", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGSEGV)


def exit_with(code):
    print("first line\nCUDA error: an illegal memory access was encountered", file=sys.stderr, flush=True)
    os._exit(code)


def hang(pid_file):
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(600)


def clock():
    return time.perf_counter()


def variant_peak(hold_mb: int, work_mb: int) -> float:
    """A variant as measure() meters it: peak reset, `work_mb` touched and freed, the peak read
    with the harness's own instrument; it then leaves `hold_mb` held in this process."""
    from bench.instruments import memory
    memory.reset_host_peak()
    work = b"\x01" * (work_mb * 2**20)  # written, so every page is resident
    del work
    peak = memory.host_peak_mb()
    POOL.append(b"\x01" * (hold_mb * 2**20))
    return peak


def measure_or_crash(variant, cfg, ctx):
    """mul segfaults; any other variant maps the parent's decoded split and hands back a row."""
    if variant.arch == "mul":
        segfault()
    from bench.worker.runner import VariantResult
    from loaders.dataset import label_of
    from loaders.resident import load_decoded
    decoded = load_decoded(Path(ctx.decoded_dir) / "train")
    assert decoded["label"].tolist() == [label_of(i) for i in cfg.train_ids]
    return VariantResult(fake_row(variant, cfg), [], [])


def fail_on_rank1(variant, cfg, ctx):
    """add fails on rank 1 only, while rank 0 waits for it in a collective; mul succeeds."""
    from bench import distributed
    if variant.arch == "add" and cfg.rank == 1:
        raise ValueError("class prior check failed on this rank's shard")
    total = distributed.reduce_sums({"ranks": 1}, cfg.device)["ranks"]
    from bench.worker.runner import VariantResult
    return VariantResult({**fake_row(variant, cfg), "samples_trained": int(total)}, [], [])


def fake_row(variant, cfg) -> dict:
    return {**variant.settings(), "seed": cfg.seed, "world_size": cfg.world_size, "status": "ok", "error": "",
            "epochs": 1, "train_samples": len(cfg.train_ids), "val_samples": len(cfg.val_ids), "loader_form": "resident",
            "params": 1, "val_loss": 0.5, "accuracy": 75.0, "sec_per_epoch": 1.0, "train_samples_per_s": 10.0,
            "target_acc": 99.0, "peak_mem_kind": "process_peak_rss", "peak_mem_mb": 1.0}


def import_measurement_path() -> int:
    """What every measuring worker imports first (tests/isolation_cost.py)."""
    import bench.worker.runner  # noqa: F401
    return 0


def map_split(folder: str) -> float:
    """The imports, then the parent's decoded splits mapped and every page read, as a resident
    loader reads them (tests/isolation_cost.py)."""
    import bench.worker.runner  # noqa: F401
    from loaders.resident import load_decoded
    return sum(float(t.sum()) for split in ("train", "val") for t in load_decoded(Path(folder) / split).values())


def compile_step(arch: str) -> dict:
    """One compiled training step of a fusion network: its seconds and Inductor's FX graph cache
    hits and misses (README: compiled graphs served across workers from the disk cache)."""
    import torch
    from models import build_model
    model = build_model(arch)
    compiled = torch.compile(model)
    rgb, lidar = torch.rand(2, 4, 64, 64), torch.rand(2, 4, 64, 64)
    start = time.perf_counter()
    compiled(rgb, lidar).sum().backward()
    counters = torch._dynamo.utils.counters["inductor"]
    return {"seconds": time.perf_counter() - start, "hits": counters["fxgraph_cache_hit"],
            "misses": counters["fxgraph_cache_miss"]}

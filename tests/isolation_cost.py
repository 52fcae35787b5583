"""What isolation adds per variant on this machine: `python tests/isolation_cost.py [ROUNDS]`;
`python tests/isolation_cost.py compile`: whether Inductor's disk cache serves a fresh worker.

A worker costs what the in-process path does not pay: starting Python, importing torch and the
measurement path, mapping the split the parent decoded (the quick profile's 1,024 + 160 samples,
every page read) and handing back a result. Each is the median over ROUNDS fresh workers
(bench.parent.launcher.run_in_worker), with `isolation_workers.py`'s targets. Last, what a
variant waits for when, as in the matrix, its worker was started ahead (Workers): the spare has
imported everything, so it maps the split and hands back. Compiled graphs come from Inductor's
on-disk cache; see README for that figure.
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(TESTS.parent), str(TESTS)]

import os  # noqa: E402

os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))  # for workers

from bench.parent.launcher import Workers, run_in_worker  # noqa: E402
from loaders.dataset import decode_split, discover_ids  # noqa: E402
from loaders.generate import generate_dataset  # noqa: E402
from loaders.resident import save_decoded  # noqa: E402
from loaders.split import make_split, stratified_subset  # noqa: E402


def median_s(target: str, *args, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run_in_worker(target, *args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(rounds: int = 5) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = generate_dataset(Path(folder) / "data", per_class=600, seed=7, progress=False)
        split = make_split(discover_ids(root), seed=42)
        for name, ids, limit in (("train", split["train"], 1024), ("val", split["val"], 160)):
            save_decoded(decode_split(root, stratified_subset(ids, limit)), Path(folder) / "decoded" / name)
        bare = median_s("isolation_workers:double", 1, rounds=rounds)
        imports = median_s("isolation_workers:import_measurement_path", rounds=rounds)
        mapped = median_s("isolation_workers:map_split", str(Path(folder) / "decoded"), rounds=rounds)
        ahead = []
        with Workers(jobs=rounds + 1) as workers:
            for _ in range(rounds):
                time.sleep(2 * imports)  # a variant's training, while the next worker imports
                start = time.perf_counter()
                workers.run("isolation_workers:map_split", str(Path(folder) / "decoded"))
                ahead.append(time.perf_counter() - start)
    print(f"per worker, median of {rounds}: start {bare:.2f} s; + torch and bench.worker.runner imported "
          f"{imports:.2f} s; + the quick split mapped and read {mapped:.2f} s; started ahead, what a variant "
          f"waits for: {statistics.median(ahead):.2f} s")


def compile_twice() -> None:
    """One compiled training step of `add` in two fresh workers sharing an empty Inductor cache."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
    for worker in ("first", "second"):
        print(worker, "fresh worker:", run_in_worker("isolation_workers:compile_step", "add"), flush=True)


if __name__ == "__main__":
    compile_twice() if sys.argv[1:] == ["compile"] else main(*map(int, sys.argv[1:]))

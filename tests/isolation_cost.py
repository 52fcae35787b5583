"""What isolation adds per variant on this machine: `python tests/isolation_cost.py [ROUNDS]`.

A worker costs what the in-process path does not pay: starting Python, importing torch and the
measurement path, mapping the split the parent decoded (the quick profile's 1,024 + 160 samples,
every page read) and handing back a result. Each is the median over ROUNDS fresh workers
(bench.parent.launcher.run_in_worker, as the matrix starts them), with `isolation_workers.py`'s
targets. Compiled graphs come from Inductor's on-disk cache; see README for that figure.
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import os  # noqa: E402

os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [sys.path[0], os.environ.get("PYTHONPATH")]))

from bench.parent.launcher import run_in_worker  # noqa: E402
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
    print(f"per worker, median of {rounds}: start {bare:.2f} s; + torch and bench.worker.runner imported "
          f"{imports:.2f} s; + the quick split mapped and read {mapped:.2f} s")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))

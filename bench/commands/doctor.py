"""`bench doctor`: what to run on a new machine before a long run.

It prints the environment, then runs every path (each loader, each precision, each compile
mode, NVML, CUDA events, inference timing) for a few steps on tiny data and ends with a
PASS / FAIL / SKIP table with the reason for each. Exit status 1 on any FAIL.
"""

import tempfile
import time
from pathlib import Path

import pandas as pd

from bench.commands.doctor_checks import FAIL, Setup, checks, environment, one_line, run_check
from bench.options import resolve_device


def add_parser(sub) -> None:
    p = sub.add_parser("doctor", help="check this machine: print its environment, try every path on tiny data")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--data", help="take the few samples from this dataset instead of generating them")
    p.add_argument("--workers", type=int, default=2, help="worker processes for the torch loader check")
    p.add_argument("--skip-compile", action="store_true", help="skip the torch.compile checks (the slow ones)")
    p.add_argument("--out", help="also write the environment and the table as Markdown here, e.g. doctor.md")


def run(args) -> int:
    started = time.perf_counter()
    device = resolve_device(args.device)
    rows = []
    try:
        env = environment(device)
    except Exception as error:  # the checks below still tell the user what works
        env = {"device": str(device)}
        rows.append(("environment", FAIL, f"could not be collected: {one_line(error)}", 0.0))
    env_table = pd.DataFrame(list(env.items()), columns=["environment", "value"]).to_markdown(index=False)
    print(env_table + "\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-doctor-") as folder:
        setup = Setup(device, Path(folder), args.workers, Path(args.data) if args.data else None)
        for name, check in checks(args.skip_compile):
            status, reason, seconds = run_check(check, setup)
            rows.append((name, status, reason, seconds))
            print(f"{status} {name} ({seconds:.1f} s)", flush=True)
    table = pd.DataFrame(rows, columns=["check", "status", "reason", "seconds"])
    cells = table.assign(reason=table["reason"].str.replace("|", "\\|"))  # a "|" in an error would split its cell
    check_table = cells.to_markdown(index=False, floatfmt=".1f")
    counts = table["status"].value_counts()
    summary = (f"{counts.get('PASS', 0)} PASS, {counts.get('SKIP', 0)} SKIP, {counts.get(FAIL, 0)} FAIL "
               f"in {time.perf_counter() - started:.0f} s on {device}")
    print(f"\n{check_table}\n\n{summary}")
    if args.out:
        Path(args.out).write_text(f"# bench doctor\n\n{env_table}\n\n{check_table}\n\n{summary}\n")
    return 1 if counts.get(FAIL, 0) else 0

"""`bench gate BASELINE CURRENT`: fail CI only on a speed regression the data support.

BASELINE is a pytest-benchmark JSON file, or a baselines folder (benchmarks/baselines) in which
the gate picks <hardware key>/baseline.json for CURRENT's hardware. With --confirm, suspect cases
are rerun interleaved with the baseline commit's (a git worktree of it), so both sides see the
same machine state, and only a regression the reruns confirm fails. Exit 1 on a regression.
"""

import json
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path


def add_parser(sub) -> None:
    from bench.options import fraction, positive, positive_number
    from reports.gate import ALPHA, MIN_ROUNDS, THRESHOLD
    p = sub.add_parser("gate", help="regression gate on pytest-benchmark JSON (raw rounds)")
    p.add_argument("baseline", help="baseline JSON, or a baselines folder keyed by hardware")
    p.add_argument("current", help="this run's JSON (pytest --benchmark-json PATH)")
    p.add_argument("--threshold", type=positive_number, default=THRESHOLD, help="slowdown that counts (default 0.10 = 10%%)")
    p.add_argument("--alpha", type=fraction, default=ALPHA, help="Mann-Whitney U significance (default 0.002)")
    p.add_argument("--min-rounds", type=positive, default=MIN_ROUNDS, help="rounds needed a side (default 6)")
    p.add_argument("--confirm", action="store_true", help="rerun suspect cases interleaved with the baseline commit")
    p.add_argument("--baseline-commit", help="commit to rerun with --confirm (default: the baseline JSON's)")
    p.add_argument("--reruns", type=positive, default=3, help="interleaved reruns per side with --confirm (default 3)")
    p.add_argument("--summary", help="append the markdown result to this file (e.g. $GITHUB_STEP_SUMMARY)")


def run(args) -> int:
    from reports.gate import judge, load_benchmarks, render, suspects
    from reports.stats import SLOWER_WITHIN
    current = load_benchmarks(args.current)
    baseline_path = pick_baseline(Path(args.baseline), current["hardware"])
    if baseline_path is None:
        return _say(args, f"No baseline for hardware `{current['hardware']}` in {args.baseline}: nothing to gate. "
                    f"Record one: copy {args.current} to {args.baseline}/{current['hardware']}/baseline.json.\n")
    baseline = load_benchmarks(baseline_path)
    table = judge(baseline["cases"], current["cases"], args.threshold, args.alpha, args.min_rounds)
    if baseline["hardware"] != current["hardware"]:
        return _say(args, render(table, f"For information only: baseline hardware `{baseline['hardware']}` is not "
                                        f"this run's `{current['hardware']}`, so it is no pass/fail reference"))
    text = render(table, f"Gate: {args.current} against {baseline_path} on `{current['hardware']}`")
    suspect = suspects(table, args.threshold)
    if args.confirm and suspect:
        commit = args.baseline_commit or baseline["commit"]
        if not commit:
            raise ValueError(f"{baseline_path}: no commit_info.id; pass --baseline-commit for --confirm")
        base_rounds, current_rounds = confirm(suspect, commit, run_case, args.reruns)
        table = judge(base_rounds, current_rounds, args.threshold, args.alpha, args.min_rounds)
        text += "\n" + render(table, f"Confirmation: suspect cases rerun interleaved with {commit[:12]}")
    failed = list(table.loc[table["fails"], "case"])
    text += f"\n**{'FAIL' if failed else 'PASS'}**: " + (f"confirmed slower: {', '.join(failed)}" if failed else
                                                        "no case is slower beyond the threshold with p < alpha") + "\n"
    within = list(table.loc[table["verdict"] == SLOWER_WITHIN, "case"])
    if within:
        text += f"Slower, but within the {args.threshold:.0%} threshold: {', '.join(within)}\n"
    _say(args, text)
    return 1 if failed else 0


def pick_baseline(path: Path, hardware: str) -> Path | None:
    """The file itself, or <folder>/<hardware>/baseline.json; None when that hardware has none."""
    if path.is_dir():
        candidate = path / hardware / "baseline.json"
        return candidate if candidate.is_file() else None
    if not path.is_file():
        raise ValueError(f"{path}: no such baseline file or folder")
    return path


def confirm(cases: list[str], commit: str, runner, reruns: int) -> tuple[dict, dict]:
    """Rounds of each case from the baseline commit and from this tree, alternating A B A B, so
    a slow spell of the machine hits both sides alike."""
    import numpy as np
    base = {case: [] for case in cases}
    current = {case: [] for case in cases}
    with baseline_tree(commit) as tree:
        for _ in range(reruns):
            for case in cases:
                base[case] += runner(tree, case)
                current[case] += runner(Path.cwd(), case)
    return ({c: np.asarray(r) for c, r in base.items()}, {c: np.asarray(r) for c, r in current.items()})


@contextmanager
def baseline_tree(commit: str):
    """A detached git worktree of `commit`, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="gate-baseline-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], check=True, capture_output=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], capture_output=True)


def run_case(tree: Path, case: str) -> list[float]:
    """One pytest-benchmark run of one case (its node id) in `tree`; its raw rounds in seconds."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        done = subprocess.run([sys.executable, "-m", "pytest", case, "-q", "-p", "no:cacheprovider",
                               "--benchmark-enable", f"--benchmark-json={out.name}"], cwd=tree,
                              capture_output=True, text=True)
        if done.returncode != 0:
            from reports.gate import GateError
            last = (done.stdout.strip().splitlines() or ["no output"])[-1]
            raise GateError(f"--confirm: rerun of {case} in {tree} failed ({last})")
        return json.loads(Path(out.name).read_text())["benchmarks"][0]["stats"]["data"]


def _say(args, text: str) -> int:
    print(text)
    if args.summary:
        with open(args.summary, "a") as f:
            f.write(text + "\n")
    return 0

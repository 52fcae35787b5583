"""`bench history add|changes|site`: results of many commits and machines in one store, their
change points, and a static site of both (reports/history/ does the work from files alone)."""

import subprocess
from functools import cache

STORE = "history"


def add_parser(sub) -> None:
    p = sub.add_parser("history", help="keep results across commits and machines; change points; static site")
    actions = p.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add run directories and pytest-benchmark JSON files to the store")
    add.add_argument("paths", nargs="+", help="run directories (results.csv + env.json) or benchmark JSON files")
    changes = actions.add_parser("changes", help="change points per hardware, case and metric over commits")
    changes.add_argument("--out", help="also write the changes as CSV to this file")
    site = actions.add_parser("site", help="static site: leaderboard, timelines, changes (works from file://)")
    site.add_argument("--out", required=True, help="site folder (index.html is its entry page)")
    site.add_argument("--price", help="USD per hour per hardware key: KEY=USD,KEY2=USD or a .csv/.json file")
    for action in (add, changes, site):
        action.add_argument("--store", default=STORE, help=f"history store folder (default {STORE}/)")


@cache
def git_commit(commit: str) -> tuple[str, str] | None:
    """(full id, commit time) of `commit` in the repository here, if git knows it."""
    try:
        out = subprocess.run(["git", "show", "-s", "--format=%H %cI", commit, "--"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    parts = out.stdout.split()
    return (parts[0], parts[1]) if out.returncode == 0 and len(parts) == 2 else None


def run(args) -> int:
    return {"add": _add, "changes": _changes, "site": _site}[args.action](args)


def _add(args) -> int:
    from reports.history.store import add
    for path, count in add(args.store, args.paths, resolve=git_commit).items():
        print(f"{path}: {count} new records" if count else f"{path}: already in {args.store}")
    return 0


def _changes(args) -> int:
    from reports.history.changes import find_changes, render
    from reports.history.store import load
    changes = find_changes(*load(args.store))
    print(render(changes))
    if args.out:
        changes.to_csv(args.out, index=False)
        print(f"\nwrote {args.out}")
    return 0


def _site(args) -> int:
    from reports.cost import parse_prices
    from reports.history.site import write_site
    prices = parse_prices(args.price) if args.price else {}
    print(write_site(args.store, args.out, prices))
    return 0

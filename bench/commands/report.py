"""`bench report`: rebuild report.md, loaders.md and the plots from a run directory's files."""

import sys
import warnings
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="rebuild report.md, loaders.md and plots from a run directory")
    p.add_argument("run_dir")


def run(args) -> None:
    from reports.results import TableWarning
    with warnings.catch_warnings():
        warnings.simplefilter("always", TableWarning)
        warnings.showwarning = _warning_printer()
        _rebuild(Path(args.run_dir))


def _warning_printer():
    """Each dropped row once, as `warning: FILE line N: ...` (several readers meet the same row)."""
    seen = set()

    def show(message, category, *rest, **options):
        if str(message) not in seen:
            seen.add(str(message))
            print(f"warning: {message}", file=sys.stderr)
    return show


def _rebuild(run_dir: Path) -> None:
    from reports.loaders_report import write_loaders_report
    from reports.markdown import write_report
    from reports.plots import write_plots
    from reports.results import LOADERS_CSV, RESULTS, RunDirError
    has_results, has_loaders = (run_dir / RESULTS).exists(), (run_dir / LOADERS_CSV).exists()
    if not has_results and not has_loaders:
        raise RunDirError(f"{run_dir} has no {RESULTS} or {LOADERS_CSV} (is it a run directory?)")
    if has_loaders:
        print(write_loaders_report(run_dir))
    if has_results:
        print(write_report(run_dir))
        for path in write_plots(run_dir):
            print(path)

"""`bench report`: rebuild report.md and the plots from a run directory's files."""

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="rebuild report.md and plots from a run directory")
    p.add_argument("run_dir")


def run(args) -> None:
    from reports.markdown import write_report
    from reports.plots import write_plots
    run_dir = Path(args.run_dir)
    if not (run_dir / "results.csv").exists():
        raise SystemExit(f"error: {run_dir} has no results.csv (is it a run directory?)")
    print(write_report(run_dir))
    for path in write_plots(run_dir):
        print(path)

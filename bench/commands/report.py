"""`bench report`: rebuild report.md, loaders.md and the plots from a run directory's files."""

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="rebuild report.md, loaders.md and plots from a run directory")
    p.add_argument("run_dir")


def run(args) -> None:
    from reports.loaders_report import write_loaders_report
    from reports.markdown import write_report
    from reports.plots import write_plots
    from reports.results import LOADERS_CSV, RESULTS, RunDirError, table_warnings_as_lines
    run_dir = Path(args.run_dir)
    has_results, has_loaders = (run_dir / RESULTS).exists(), (run_dir / LOADERS_CSV).exists()
    if not has_results and not has_loaders:
        raise RunDirError(f"{run_dir} has no {RESULTS} or {LOADERS_CSV} (is it a run directory?)")
    with table_warnings_as_lines():
        if has_loaders:
            print(write_loaders_report(run_dir))
        if has_results:
            print(write_report(run_dir))
            for path in write_plots(run_dir):
                print(path)

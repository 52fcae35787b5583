"""`bench report`: rebuild report.md, loaders.md and the plots from a run directory's files; with
several run directories (the shards of `bench all --shard I/N`) and --out, merge them first."""

from pathlib import Path

from bench.errors import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="rebuild report.md, loaders.md and plots from a run directory")
    p.add_argument("run_dir", nargs="+", help="a run directory, or the shards of one run to merge (with --out)")
    p.add_argument("--out", help="merge the run directories (shards of one run) into this new folder and report it")


def run(args) -> None:
    from reports.loaders_report import write_loaders_report
    from reports.markdown import write_report
    from reports.plots import write_plots
    from reports.results import LOADERS_CSV, RESULTS, RunDirError, table_warnings_as_lines
    run_dir = merged(args.run_dir, args.out)
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


def merged(run_dirs: list[str], out: str | None) -> Path:
    """The one run directory to report: the only one given, or the shards merged into --out."""
    from reports.merge import merge_runs
    if out is None:
        if len(run_dirs) > 1:
            raise UsageError(f"{len(run_dirs)} run directories: merging shards needs --out MERGED")
        return Path(run_dirs[0])
    return merge_runs(run_dirs, out)

"""loaders.md from a run directory's loaders.csv, so `bench loaders` and `bench report` write
the same page; a loader that failed is listed with its one-line error, never dropped."""

from pathlib import Path

import pandas as pd

from reports.results import LOADER_COLUMNS, LOADERS_CSV, read_table, write_atomically

SHOWN = ["loader", "form", "samples_per_s", "ratio_to_torch", "batch_ms_p50", "batch_ms_p99", "first_epoch_s",
         "host_peak_rss_mb", "torch_device_peak_mb", "status"]


def with_ratio(table: pd.DataFrame) -> pd.DataFrame:
    """All schema columns, ratio_to_torch against the torch DataLoader (NaN when it did not run)."""
    table = table.reindex(columns=LOADER_COLUMNS)
    speed = pd.to_numeric(table["samples_per_s"], errors="coerce")
    torch_speed = speed[(table["loader"] == "torch") & (table["status"] == "ok")]
    table["ratio_to_torch"] = speed / torch_speed.iloc[0] if len(torch_speed) else float("nan")
    return table


def write_loaders_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    table = read_table(run_dir / LOADERS_CSV, key=None)
    if table.empty:
        raise ValueError(f"{run_dir / LOADERS_CSV}: missing or empty (is it a `bench loaders` run directory?)")
    table = with_ratio(table)
    first = table.iloc[0]
    ok = table[table["status"] == "ok"]
    lines = [f"# Loaders on {first['device']}", "",
             f"Batch {int(first['batch_size'])}, {int(first['workers'])} workers"]
    if not ok.empty:
        lines[-1] += f", {int(ok.iloc[0]['samples'])} samples, {int(ok.iloc[0]['epochs'])} timed epochs."
        shown = ok[SHOWN].astype(object).where(ok[SHOWN].notna(), None)  # NaN prints as n/a, not nan
        lines += ["", shown.to_markdown(index=False, floatfmt=",.2f", missingval="n/a"), ""]
    else:
        lines += ["", "No loader finished.", ""]
    failed = table[table["status"] != "ok"]
    if not failed.empty:
        lines += ["## Failed loaders", "", failed[["loader", "error"]].fillna("").to_markdown(index=False), ""]
    return write_atomically(run_dir / "loaders.md", "\n".join(lines))

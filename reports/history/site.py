"""A static site of the history: works from file:// with no server and no network.

    index.html                       leaderboard at each hardware's latest commit, cost, the list
                                     of changes, the runs with links to their reports
    timeline-<hardware>-<metric>.html  a chart per case: each commit's value, the band of its
                                     samples (min to max), change points marked and explained
    plotly.min.js                    plotly's bundled JS, written once, referenced relatively

site_data() is everything the pages show, as tables, so tests check the numbers without a browser.
"""

import html
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.offline

from reports.cost import cost_columns
from reports.history.changes import LEVEL, SERIES, SHORT, explain, find_changes, points
from reports.history.store import LABELS, load

PLOTLY_JS = "plotly.min.js"
BOARD_METRICS = ["train_samples_per_s", "infer_samples_per_s", "samples_per_j", "time_to_target_s"]
BOARD_HEADERS = {"train_samples_per_s": "train samples/s", "infer_samples_per_s": "infer samples/s",
                 "samples_per_j": "samples/J", "j_per_sample": "J/sample", "time_to_target_s": "time to target s",
                 "usd_per_hour": "USD/h", "usd_per_million_samples": "USD per 1M samples",
                 "usd_per_trained_network": "USD per trained network"}
STYLE = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
table{border-collapse:collapse;font-size:13px;margin:8px 0 20px}td,th{border:1px solid #ccc;padding:3px 7px}
th{background:#f2f2f2;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(640px,1fr));gap:12px}
.chart{border:1px solid #ddd;padding:4px}.chart ul{font-size:12px;margin:2px 0 6px}"""


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def timeline_page(hardware: str, metric: str) -> str:
    return f"timeline-{slug(hardware)}-{slug(metric)}.html"


def leaderboard(table: pd.DataFrame, prices: dict[str, float]) -> pd.DataFrame:
    """A row per hardware and case at its latest commit: speed, energy and cost."""
    board = table[table["metric"].isin(BOARD_METRICS)]
    rows = []
    for (hardware, case), own in board.groupby(["hardware", "case"], sort=True):
        latest = own[own["point"] == own.sort_values("when", kind="stable")["point"].iloc[-1]]
        value = dict(zip(latest["metric"], latest["value"]))
        row = {"hardware": hardware, "commit": latest["label"].iloc[0], "case": case,
               **{m: value.get(m, np.nan) for m in BOARD_METRICS}}
        row["j_per_sample"] = 1 / row["samples_per_j"] if row["samples_per_j"] > 0 else np.nan
        row["usd_per_hour"] = prices.get(hardware, np.nan)
        row.update(cost_columns(row["train_samples_per_s"], row["time_to_target_s"], row["usd_per_hour"]))
        rows.append(row)
    columns = ["hardware", "commit", "case", *BOARD_METRICS, "j_per_sample", "usd_per_hour", "usd_per_million_samples",
               "usd_per_trained_network"]
    return pd.DataFrame(rows, columns=columns).sort_values("train_samples_per_s", ascending=False, kind="stable",
                                                          na_position="last").reset_index(drop=True)


def runs_table(records: pd.DataFrame) -> pd.DataFrame:
    """One row per source added: hardware, commit, run time and the report's path (store-relative)."""
    runs = records.drop_duplicates("source")[["hardware", "commit", "time", "source", "report"]]
    return runs.assign(commit=runs["commit"].astype(str).str[:SHORT].replace("", "not recorded"),
                       time=runs["time"].fillna("not recorded")).reset_index(drop=True)


def site_data(store: str | Path, prices: dict[str, float] | None = None) -> dict:
    """Everything the site shows: points, changes, leaderboard and runs, as tables."""
    records, envs = load(store)
    table = points(records)
    return {"points": table, "changes": find_changes(records, envs), "leaderboard": leaderboard(table, prices or {}),
            "runs": runs_table(records), "envs": envs}


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<script src='{PLOTLY_JS}'></script><style>{STYLE}</style></head>\n<body>{body}</body></html>\n")


def _cell(value, link: str | None = None) -> str:
    if isinstance(value, float):
        text = "n/a" if np.isnan(value) else f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
        return f"<td class='n'>{text}</td>"
    text = html.escape("" if value is None or value is pd.NA else str(value))
    return f"<td><a href='{html.escape(link)}'>{text}</a></td>" if link else f"<td>{text}</td>"


def _table(frame: pd.DataFrame, links: dict[str, pd.Series] | None = None, headers: dict | None = None) -> str:
    """An HTML table; `links` maps a column to the href of each of its cells."""
    links, headers = links or {}, headers or {}
    head = "".join(f"<th>{html.escape(headers.get(c, c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(_cell(row[c], links[c].iloc[i] if c in links else None) for c in frame.columns)
                   + "</tr>" for i, (_, row) in enumerate(frame.iterrows()))
    return f"<table><tr>{head}</tr>{body}</table>"


def _chart(fig: go.Figure, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config={"displayModeBar": False},
                       default_height=f"{fig.layout.height}px")


def board_chart(board: pd.DataFrame) -> go.Figure:
    """Training samples/s per case, a bar per hardware; horizontal so long variant names stay readable."""
    fig = go.Figure()
    for hardware, rows in board.dropna(subset=["train_samples_per_s"]).groupby("hardware", sort=True):
        fig.add_bar(y=rows["case"], x=rows["train_samples_per_s"], name=hardware, orientation="h")
    cases, speeds = board["case"].nunique(), board["train_samples_per_s"].dropna()
    fig.update_xaxes(type="log" if speeds.max() > 30 * speeds.min() else "linear")  # CPU beside GPU stays visible
    fig.update_layout(barmode="group", height=160 + 22 * cases * max(1, board["hardware"].nunique()),
                      xaxis_title="train samples/s", yaxis={"automargin": True, "autorange": "reversed"},
                      legend_title="hardware", margin={"t": 30})
    return fig


def timeline_chart(series: pd.DataFrame, changes: pd.DataFrame, envs: dict) -> go.Figure:
    """One case's values over commits with the band of their samples and its changes marked."""
    x = list(range(len(series)))
    torch = [str(envs.get(e, {}).get("torch") or "not recorded") for e in series["env"]]
    hover = [f"commit {lab}<br>value {v:.4g} ({n} samples)<br>range {lo:.4g}-{hi:.4g}<br>torch {t}"
             for lab, v, n, lo, hi, t in zip(series["label"], series["value"], series["samples"], series["low"],
                                             series["high"], torch)]
    fig = go.Figure([
        go.Scatter(x=x, y=series["high"], mode="lines", line={"width": 0}, hoverinfo="skip", showlegend=False),
        go.Scatter(x=x, y=series["low"], mode="lines", line={"width": 0}, fill="tonexty",
                   fillcolor="rgba(31,119,180,0.2)", hoverinfo="skip", name="samples min-max"),
        go.Scatter(x=x, y=series["value"], mode="lines+markers", name="median", text=hover,
                   hovertemplate="%{text}<extra></extra>", line={"color": "#1f77b4"},
                   error_y=None if len(x) > 1 else {"type": "data", "symmetric": False,  # a band needs two points
                                                    "array": series["high"] - series["value"],
                                                    "arrayminus": series["value"] - series["low"]})])
    for _, change in changes.iterrows():
        colour = "#2ca02c" if change["direction"] == "improvement" else "#d62728"
        fig.add_vline(x=change["index"] - 0.5, line={"dash": "dash", "color": colour})
        fig.add_annotation(x=change["index"] - 0.5, y=1, yref="paper", text=f"x{change['ratio']:.2f}",
                           hovertext=explain(change), showarrow=False, font={"color": colour}, yanchor="bottom")
    metric = series["metric"].iloc[0]
    fig.update_layout(title={"text": series["case"].iloc[0], "font": {"size": 13}}, height=320,
                      margin={"t": 50, "b": 60, "l": 60, "r": 20}, showlegend=False,
                      yaxis_title=LABELS.get(metric, metric),
                      xaxis={"tickvals": x, "ticktext": list(series["label"]), "tickangle": -45, "title": "commit"})
    return fig


def write_timeline(out: Path, hardware: str, metric: str, table: pd.DataFrame, changes: pd.DataFrame,
                   envs: dict) -> Path:
    """The page of one hardware and metric: a chart per case, its changes listed under it."""
    charts = []
    for number, (case, series) in enumerate(table.groupby("case", sort=True)):
        own = changes[changes["case"] == case]
        notes = "".join(f"<li>{html.escape(explain(c))}</li>" for _, c in own.iterrows())
        charts.append(f"<div class='chart'>{_chart(timeline_chart(series, own, envs), f'chart-{number}')}"
                      f"<ul>{notes or '<li>no change point</li>'}</ul></div>")
    label = LABELS.get(metric, metric)
    body = (f"<p><a href='index.html'>index</a></p><h1>{html.escape(label)} on {html.escape(hardware)}</h1>"
            "<p>Each point is one commit (the median of its runs), in commit order; the band spans its samples "
            "(per-epoch windows, benchmark rounds or seeds). Dashed lines mark change points (green better, red "
            f"worse); hover the ratio for its {LEVEL:.0%} interval and what differs in the environment.</p>"
            f"<div class='grid'>{''.join(charts)}</div>")
    path = out / timeline_page(hardware, metric)
    path.write_text(_page(f"{label} on {hardware}", body))
    return path


def _links(frame: pd.DataFrame, store: Path, out: Path) -> pd.Series:
    return frame["report"].map(lambda p: os.path.relpath((store / p).resolve(), out.resolve()))


def _short(path: str) -> str:
    """The last three parts of a path: enough to tell runs apart, short enough for a table."""
    return "/".join(Path(path).parts[-3:])


def write_site(store: str | Path, out: str | Path, prices: dict[str, float] | None = None) -> Path:
    """Writes the site into `out`; returns index.html's path."""
    store, out = Path(store), Path(out)
    data = site_data(store, prices)
    out.mkdir(parents=True, exist_ok=True)
    (out / PLOTLY_JS).write_text(plotly.offline.get_plotlyjs())
    table, changes = data["points"], data["changes"]
    pages = []
    for (hardware, metric), series in table.groupby(["hardware", "metric"], sort=True):
        own = changes[(changes["hardware"] == hardware) & (changes["metric"] == metric)]
        write_timeline(out, hardware, metric, series, own, data["envs"])
        pages.append({"hardware": hardware, "metric": LABELS.get(metric, metric), "cases": series["case"].nunique(),
                      "commits": series["point"].nunique(), "changes": len(own),
                      "page": timeline_page(hardware, metric)})
    pages = pd.DataFrame(pages)
    board, runs = data["leaderboard"], data["runs"]
    shown_changes = changes.assign(explanation=[explain(c) for _, c in changes.iterrows()],
                                   page=[timeline_page(h, m) for h, m in zip(changes["hardware"], changes["metric"])])
    body = ["<h1>fusionbench history</h1>",
            f"<p>{len(data['runs'])} runs, {table['hardware'].nunique()} hardware keys, "
            f"{table['point'].nunique()} commits, {len(changes)} change points. <a href='#leaderboard'>Leaderboard</a> "
            "&middot; <a href='#changes'>Change points</a> &middot; <a href='#timelines'>Timelines</a> &middot; "
            "<a href='#runs'>Runs</a></p>",
            "<h2 id='leaderboard'>Leaderboard: each case at its latest commit on each hardware</h2>",
            _chart(board_chart(board), "leaderboard-chart") if board["train_samples_per_s"].notna().any() else "",
            "<p>Cost from the prices given (--price, USD per hour): dollars per million training samples and "
            "per network trained to the target accuracy; n/a where the price, the energy or the target was not "
            "measured.</p>", _table(board, headers=BOARD_HEADERS),
            "<h2 id='changes'>Change points</h2>",
            _table(shown_changes[SERIES + ["explanation", "page"]], {"page": shown_changes["page"]})
            if len(changes) else "<p>No change point: no series stepped beyond its noise.</p>",
            "<h2 id='timelines'>Timelines</h2>", _table(pages, {"page": pages["page"]}),
            "<h2 id='runs'>Runs</h2>", _table(runs.assign(report=runs["report"].map(_short)).drop(columns="source"),
                                             {"report": _links(runs, store, out)})]
    index = out / "index.html"
    index.write_text(_page("fusionbench history", "\n".join(body)))
    return index

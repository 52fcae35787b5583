"""The history site: the data behind each page (leaderboard, cost, timelines, changes, links) on
any machine, and the pages themselves in headless Chromium where it is installed."""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main
from reports.history.site import PLOTLY_JS, site_data, timeline_page
from reports.history.store import add
from test_history import NOISE_A, commit_id, make_run_dir

CASES = ["add-b32", "mul-b32", "late-b32"]
COMMITS = 10
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A store of two hardware keys x 3 cases x 10 commits (add-b32 on the H200 drops 40 % at commit 5
    with a torch upgrade) plus a benchmark JSON, and the site built from it with prices."""
    root = tmp_path_factory.mktemp("history")
    rng = np.random.default_rng(0)
    runs, times = [], {}
    for hardware, base in (("nvidia-h200", 2000.0), ("nvidia-h100", 1000.0)):
        for i in range(COMMITS):
            slow = hardware == "nvidia-h200" and i >= 5
            exact = {case: base * (k + 1) * (0.6 if slow and case == "add-b32" else 1) for k, case in enumerate(CASES)}
            # the latest commit exact, for the leaderboard's known answers; 1 % noise before it
            noisy = {c: v * (1 + 0.01 * rng.standard_normal()) for c, v in exact.items()}
            speeds = exact if i == COMMITS - 1 else noisy
            runs.append(make_run_dir(root / "runs" / f"{hardware}-{i}", commit_id(i), speeds, hardware=hardware,
                                     env={"torch": "2.9.0" if i < 5 else "2.10.0"}))
            times[commit_id(i)[:7]] = (commit_id(i), f"2026-01-{i + 1:02d}T00:00:00+00:00")
    (runs[-1] / "report.md").write_text("# report\n")
    store = root / "history"
    add(store, runs + [NOISE_A], resolve=times.get)
    out = root / "site"
    assert main(["history", "site", "--store", str(store), "--out", str(out), "--price", "nvidia-h200=3.6"]) == 0
    return store, out


def test_leaderboard_is_each_hardwares_latest_commit_with_cost(site):
    store, _ = site
    board = site_data(store, {"nvidia-h200": 3.6})["leaderboard"]
    h200 = board[board["hardware"] == "nvidia-h200"].set_index("case")
    assert set(h200["commit"]) == {commit_id(COMMITS - 1)[:7]}
    assert h200.loc["mul-b32", "train_samples_per_s"] == pytest.approx(4000)
    assert h200.loc["add-b32", "train_samples_per_s"] == pytest.approx(1200)  # after the drop
    # 3.6 USD/h = 0.001 USD/s: 4000 samples/s -> 0.25 USD per 1M samples; 1e5/4000 = 25 s to target -> 0.025 USD
    assert h200.loc["mul-b32", "usd_per_million_samples"] == pytest.approx(0.25)
    assert h200.loc["mul-b32", "usd_per_trained_network"] == pytest.approx(0.025)
    assert h200.loc["mul-b32", "j_per_sample"] == pytest.approx(100 / 4000)
    h100 = board[board["hardware"] == "nvidia-h100"]
    assert h100["usd_per_million_samples"].isna().all()  # no price given for it
    assert list(board["train_samples_per_s"]) == sorted(board["train_samples_per_s"], reverse=True)


def test_the_planted_step_is_the_one_change_and_is_explained(site):
    store, out = site
    changes = site_data(store)["changes"]
    train = changes[changes["metric"] == "train_samples_per_s"]
    assert list(zip(train["hardware"], train["case"])) == [("nvidia-h200", "add-b32")]
    assert train.iloc[0]["after_commit"] == commit_id(5) and "torch: 2.9.0 -> 2.10.0" in train.iloc[0]["env_differs"]
    page = (out / timeline_page("nvidia-h200", "train_samples_per_s")).read_text()
    assert "x0.60" in page and "torch: 2.9.0 -&gt; 2.10.0" in page
    assert timeline_page("nvidia-h200", "train_samples_per_s") in (out / "index.html").read_text()


def test_every_page_works_offline_and_links_resolve(site):
    store, out = site
    pages = sorted(out.glob("*.html"))
    table = site_data(store)["points"]
    assert len(pages) == 1 + table.groupby(["hardware", "metric"]).ngroups
    for page in pages:
        text = page.read_text()
        assert re.findall(r"""src=['"]([^'"]+)""", text) == [PLOTLY_JS]  # one local script, nothing fetched
        assert "https://" not in text.replace("https://plotly.com", "")
    assert (out / PLOTLY_JS).stat().st_size > 1_000_000  # plotly's bundle, written once
    links = re.findall(r"href='([^'#]+)'", (out / "index.html").read_text())
    assert links and all((out / link).exists() for link in links)
    assert any(link.endswith("report.md") for link in links)


def rendered(page: Path, profile: Path) -> tuple[str, str]:
    """(DOM after scripts ran, Chromium's console log) of a page opened from file:// headless,
    with every host name unresolvable so any network use would show as an error."""
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND",
                           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--dump-dom",
                           page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    return done.stdout, "\n".join(line for line in done.stderr.splitlines() if ":CONSOLE" in line)


def points_per_chart(dom: str) -> dict[str, int]:
    """Markers or bars drawn in each plotly chart of a DOM (plotly draws each as class="point")."""
    starts = [(m.start(), m.group(1)) for m in re.finditer(r'<div id="([^"]+)" class="[^"]*plotly-graph-div', dom)]
    ends = [s for s, _ in starts[1:]] + [len(dom)]
    return {name: dom[start:end].count('class="point"') for (start, name), end in zip(starts, ends)}


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install chromium)")
def test_pages_load_without_script_errors_and_each_chart_has_its_points(site, tmp_path):
    store, out = site
    table = site_data(store)["points"]
    dom, console = rendered(out / "index.html", tmp_path / "profile")
    assert console == ""
    board = site_data(store)["leaderboard"]
    assert points_per_chart(dom) == {"leaderboard-chart": int(board["train_samples_per_s"].notna().sum())}
    for (hardware, metric), series in table.groupby(["hardware", "metric"]):
        dom, console = rendered(out / timeline_page(hardware, metric), tmp_path / "profile")
        assert console == "", timeline_page(hardware, metric)
        expected = series.groupby("case").size().sort_index()
        assert points_per_chart(dom) == {f"chart-{i}": int(n) for i, n in enumerate(expected)}

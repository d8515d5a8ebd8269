"""`tillstream report` renders the dashboards' panels from pipeline data, through the
running `up` and straight from the data directory, into HTML that headless Chromium
draws with real charts."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from dashboards.model import load_dashboards
from dashboards.report import PALETTE
from tests.pipeline import Pipeline
from tillstream.sample_data import generate_sales

pytestmark = [pytest.mark.integration, pytest.mark.broker_independent]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHART_TYPES = {"timeseries", "barchart", "piechart"}


def _report(pipeline: Pipeline, out: Path, *extra: str) -> str:
    result = subprocess.run(
        pipeline.command("report", "--out", str(out), *extra),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "panels of 4 dashboards" in result.stdout
    return out.read_text(encoding="utf-8")


def _panels(page: str) -> dict[str, str]:
    """Panel title -> its HTML."""
    found = re.split(r'(?=<div class="panel" data-panel=")', page)
    panels = {}
    for chunk in found[1:]:
        title = re.match(r'<div class="panel" data-panel="([^"]*)"', chunk)
        assert title is not None
        panels[html.unescape(title[1])] = chunk
    return panels


def _clickhouse_panels() -> dict[str, str]:
    return {
        panel.title: panel.type
        for board in load_dashboards()
        for panel in board.panels
        if panel.targets and all(t.datasource == "clickhouse" for t in panel.targets)
    }


def _assert_every_clickhouse_panel_has_data(page: str) -> None:
    panels = _panels(page)
    for title, kind in _clickhouse_panels().items():
        body = panels[title]
        assert "Query failed" not in body, body[:2000]
        assert "No data" not in body and "No rows" not in body, f"{title} is empty"
        if kind in CHART_TYPES:
            assert '<svg class="chart' in body, f"{title} has no chart"
        elif kind == "table":
            assert "<td>" in body, f"{title} has no rows"
    assert "<script" not in page and "http://" not in page.split("</header>", 1)[1]


def test_the_report_renders_every_panel_through_up_and_from_the_data_directory(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    pipeline.start()
    truth = generate_sales(pipeline.inbox / "sales.csv", 5_000, seed=31)
    pipeline.wait_for_status("sales.csv", "done")

    live = _report(pipeline, tmp_path / "live.html")
    assert "from the running tillstream" in live
    _assert_every_clickhouse_panel_has_data(live)
    orders = re.search(r'data-panel="Orders".*?<b>([^<]+)</b>', live, re.S)
    assert orders is not None and orders[1] == f"{truth.valid / 1000:.3g}k"

    # One region chosen: the variables reach the SQL.
    north = _report(pipeline, tmp_path / "north.html", "--var", "region=North")
    share = _panels(north)["Revenue share by region"]
    assert "North:" in share and "South:" not in share

    assert pipeline.stop() == 0
    offline = _report(pipeline, tmp_path / "offline.html")
    assert "from the running tillstream" not in offline
    _assert_every_clickhouse_panel_has_data(offline)
    offline_orders = re.search(r'data-panel="Orders".*?<b>([^<]+)</b>', offline, re.S)
    assert offline_orders is not None and offline_orders[1] == orders[1]

    if CHROMIUM is None:
        pytest.skip("chromium not found: SKIPPED the screenshot (apt-get install chromium)")
    screenshot = tmp_path / "report.png"
    shot = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--window-size=1400,3800",
            f"--screenshot={screenshot}",
            (tmp_path / "live.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert shot.returncode == 0 and screenshot.exists(), shot.stderr[-2000:]
    _assert_charts_were_drawn(screenshot, live)


def _assert_charts_were_drawn(screenshot: Path, page: str) -> None:
    from PIL import Image

    with Image.open(screenshot) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 24) or []
    pixels = Counter({colour: count for count, colour in colours})
    total = sum(pixels.values())
    background = pixels.most_common(1)[0][1]
    assert background / total < 0.9, "the page is (nearly) blank"
    # Every series colour the charts use shows up, in solid areas, not as a stray pixel.
    used = {colour for colour in PALETTE if f'"{colour}"' in page}
    assert len(used) >= 4
    for colour in used:
        rgb = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
        assert pixels[rgb] >= 200, f"{colour} hardly appears in the screenshot"

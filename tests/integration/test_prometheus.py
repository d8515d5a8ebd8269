"""A real Prometheus (the Debian package) scrapes a running `tillstream up` and loads
the alert rules; every PromQL expression of the dashboards and alerts is evaluated
through its HTTP API.

Dashboard expressions must return series. An alert's expression is a condition
that is empty while all is well, so for alerts each metric selector in it must
return series, the whole expression must evaluate without error, and Prometheus
must report every rule healthy after evaluating it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards.macros import expand_prometheus
from dashboards.model import load_dashboards
from tests.pipeline import Pipeline, wait_for
from tests.sales_api import Route, SalesApi
from tillstream.broker import free_port
from tillstream.sample_data import generate_sales

pytestmark = [pytest.mark.integration, pytest.mark.broker_independent]

ALERTS = Path(__file__).resolve().parents[2] / "infra" / "prometheus" / "alerts.yml"
PROMETHEUS = shutil.which("prometheus")
SCRAPE_SECONDS = 1
RATE_INTERVAL = "15s"
"""Grafana's $__rate_interval: at least four scrape intervals."""

_SELECTOR = re.compile(r"\b(?:tillstream_[a-z0-9_]+|up)(?:\{[^}]*\})?(?![\w(])")


class Prometheus:
    def __init__(self, root: Path, target: str) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "prometheus.yml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "global": {
                        "scrape_interval": f"{SCRAPE_SECONDS}s",
                        "evaluation_interval": f"{SCRAPE_SECONDS}s",
                    },
                    "rule_files": [str(ALERTS)],
                    "scrape_configs": [
                        {"job_name": "tillstream", "static_configs": [{"targets": [target]}]}
                    ],
                }
            ),
            encoding="utf-8",
        )
        self.log = root / "prometheus.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert PROMETHEUS is not None
        with open(self.log, "wb") as log:
            self._process = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.root / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(self._ready, 60, "Prometheus to be ready", self.log_tail)

    def _ready(self) -> bool:
        assert self._process is not None
        if self._process.poll() is not None:
            raise AssertionError(f"prometheus exited\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def close(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as r:
                body = json.load(r)
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{path} {params}: {exc.read().decode()}") from None
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"] if data["resultType"] == "vector" else []
        return result


@pytest.fixture
def polled_pipeline(make_pipeline: Callable[..., Pipeline]) -> Iterator[Pipeline]:
    """A pipeline with one poller, whose first request is answered 503 and retried:
    the poller panels have runs, records and a failed request to show."""
    api = SalesApi({"page": Route("PG", lambda _: True, faults=deque(["503"]))})
    api.routes["page"].add(12)
    api.start()
    poller = {
        "name": "shop",
        "url": f"{api.url}/page",
        "interval_seconds": 3600,
        "records_path": "data",
        "column_aliases": {
            "order_id": ["orderRef"],
            "sold_at": ["createdAt"],
            "product": ["item.name"],
        },
        "pagination": {"style": "page", "page_size": 5},
        "backoff_seconds": 0.05,
    }
    yield make_pipeline(config={"pollers": [poller]})
    api.close()


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Any]:
    if PROMETHEUS is None:
        pytest.skip(
            "prometheus binary not found: SKIPPED the real-Prometheus test "
            "(apt-get install prometheus; .ci/run installs it)"
        )
    started: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        server = Prometheus(tmp_path / "prometheus", target)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.close()


def test_every_dashboard_and_alert_expression_has_series_in_a_real_prometheus(
    polled_pipeline: Pipeline, prometheus_for: Any
) -> None:
    pipeline = polled_pipeline
    pipeline.start()
    pipeline.wait_for_status("shop", "done")
    truth = generate_sales(pipeline.inbox / "sales.csv", 5_000, seed=29)
    pipeline.wait_for_status("sales.csv", "done")
    target = urllib.parse.urlsplit(pipeline.api_url).netloc
    prometheus: Prometheus = prometheus_for(target)

    def scraped_enough() -> bool:
        samples = prometheus.query('count_over_time(up{job="tillstream"}[1m])')
        up = prometheus.query('up{job="tillstream"}')
        return (
            bool(samples and up)
            and float(samples[0]["value"][1]) >= 5
            and (up[0]["value"][1] == "1")
        )

    wait_for(scraped_enough, 60, "five successful scrapes of tillstream", prometheus.log_tail)

    # What Prometheus sees is what the pipeline did.
    [read] = prometheus.query("tillstream_watcher_rows_read_total")
    assert int(float(read["value"][1])) == truth.rows
    for gauge, label in (
        ("tillstream_component_up", "component"),
        ("tillstream_runtime_dependency_up", "dependency"),
    ):
        states = {s["metric"][label]: s["value"][1] for s in prometheus.query(gauge)}
        assert states and set(states.values()) == {"1"}, f"{gauge}: {states}"

    failures: list[str] = []
    for board in load_dashboards():
        for panel in board.panels:
            for target_query in panel.targets:
                if target_query.datasource != "prometheus":
                    continue
                expr = expand_prometheus(target_query.text, {}, RATE_INTERVAL)
                if not prometheus.query(expr):
                    failures.append(f"{board.title} / {panel.title}: no series for {expr}")

    rules = yaml.safe_load(ALERTS.read_text())["groups"]
    for group in rules:
        for rule in group["rules"]:
            name = rule.get("alert") or rule["record"]
            prometheus.query(rule["expr"])  # evaluates, or fails the test with the error
            if "record" in rule and not prometheus.query(rule["record"]):
                failures.append(f"recording rule {name} recorded nothing")
            for selector in _SELECTOR.findall(rule["expr"]):
                if not prometheus.query(selector):
                    failures.append(f"alert {name}: no series for {selector}")
    assert not failures, "\n".join(failures)

    def rules_evaluated() -> list[dict[str, Any]] | None:
        groups = prometheus.api("rules")["groups"]
        evaluated = [r for g in groups for r in g["rules"]]
        done = all(not r.get("lastEvaluation", "0").startswith("0") for r in evaluated)
        return evaluated if done else None

    evaluated = wait_for(rules_evaluated, 30, "every rule to be evaluated", prometheus.log_tail)
    unhealthy = [f"{r['name']}: {r.get('lastError')}" for r in evaluated if r["health"] != "ok"]
    assert not unhealthy, "\n".join(unhealthy)
    assert len(evaluated) == sum(len(group["rules"]) for group in rules)


def test_the_report_fills_the_prometheus_panels_from_a_prometheus(
    polled_pipeline: Pipeline, prometheus_for: Any, tmp_path: Path
) -> None:
    pipeline = polled_pipeline
    pipeline.start()
    pipeline.wait_for_status("shop", "done")
    prometheus: Prometheus = prometheus_for(urllib.parse.urlsplit(pipeline.api_url).netloc)
    wait_for(
        lambda: prometheus.query('count_over_time(up{job="tillstream"}[1m]) >= 3'),
        60,
        "three scrapes",
        prometheus.log_tail,
    )
    # Ingested while Prometheus watches, so the rates and quantiles have data.
    truth = generate_sales(pipeline.inbox / "sales.csv", 2_000, seed=37)
    pipeline.wait_for_status("sales.csv", "done")
    # The file's latency is observed at `done`, after its rows were read: wait for that.
    finished = pipeline.metric("tillstream_end_to_end_seconds_count")
    wait_for(
        lambda: (
            prometheus.query(f"tillstream_watcher_rows_read_total == {truth.rows}")
            and prometheus.query(f"tillstream_end_to_end_seconds_count == {finished:g}")
        ),
        60,
        "Prometheus to scrape the finished file",
        prometheus.log_tail,
    )
    out = tmp_path / "report.html"
    result = subprocess.run(
        pipeline.command("report", "--out", str(out), "--prometheus", prometheus.url),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    page = out.read_text(encoding="utf-8")
    health = page.split("tillstream / Pipeline health", 1)[1]
    [board] = [b for b in load_dashboards() if b.uid == "tillstream-pipeline-health"]
    for panel in board.panels:
        body = health.split(f'data-panel="{panel.title}"', 1)[1].split('<div class="panel"')[0]
        assert "--prometheus URL" not in body and "Query failed" not in body, body[:500]
        assert "No data" not in body, f"{panel.title} is empty"
        if panel.type == "timeseries":
            assert '<svg class="chart' in body, panel.title

"""HTTP API pollers, run by `tillstream up` against a local API: every pagination style
and authentication kind, faults, records added between polls, a kill mid-pagination.
Every record must land in ClickHouse exactly once, and no secret in any output."""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from producers.polling import records_chunk
from producers.readers import decode_exact_json
from tests.pipeline import Pipeline
from tests.sales_api import Route, SalesApi, api_key, basic, bearer, revenue
from tillstream.settings import load_settings

pytestmark = pytest.mark.integration

PAGE_TOKEN = "pg-token-7f3a9c1e5b"  # noqa: S105 - test secrets, asserted never to leak
LINK_TOKEN = "ln-token-2d8e4f6a0c"  # noqa: S105
PASSWORD = "pw-9b1d3f5a7c"  # noqa: S105
API_KEY = "key-4c6e8a0b2d"
SECRETS = [PAGE_TOKEN, LINK_TOKEN, PASSWORD, API_KEY]
BASIC_HEADER = base64.b64encode(f"till:{PASSWORD}".encode()).decode()

QUICK_RETRIES = {"backoff_seconds": 0.05, "backoff_max_seconds": 0.5, "timeout_seconds": 10}
COLUMNS = {"order_id": ["orderRef"], "sold_at": ["createdAt"], "product": ["item.name"]}


@pytest.fixture
def api() -> Iterator[SalesApi]:
    api = SalesApi(
        {
            "page": Route("PG", bearer(PAGE_TOKEN)),
            "offset": Route("OF", basic("till", PASSWORD)),
            "cursor": Route("CU", api_key("X-Api-Key", API_KEY)),
            "link": Route("LN", bearer(LINK_TOKEN)),
        }
    )
    api.start()
    yield api
    api.close()


@pytest.fixture
def secrets_in_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("SHOP_TOKEN", PAGE_TOKEN)
    monkeypatch.setenv("LINK_TOKEN", LINK_TOKEN)
    monkeypatch.setenv("OFFSET_PASSWORD", PASSWORD)
    key_file = tmp_path / "api.key"
    key_file.write_text(API_KEY + "\n")
    return key_file


def idle_window() -> dict[str, str]:
    """An active window hours away: runs happen only on `poll --once`, which ignores it."""
    now = datetime.now(UTC)
    return {
        "active_from": (now + timedelta(hours=6)).strftime("%H:%M"),
        "active_until": (now + timedelta(hours=7)).strftime("%H:%M"),
    }


def pollers(api: SalesApi, key_file: Path, **common: Any) -> list[dict[str, Any]]:
    shared = {"column_aliases": COLUMNS, **QUICK_RETRIES, **common}
    updated = {"field": "updated_at", "param": "updated_since"}
    by_id = {"field": "id", "param": "since_id"}
    return [
        {
            "name": "page",
            "url": f"{api.url}/page",
            "records_path": "data",
            "auth": {"kind": "bearer", "secret_env": "SHOP_TOKEN"},
            "pagination": {"style": "page", "page_size": 5},
            "cursor": updated,
            **shared,
        },
        {
            "name": "offset",
            "url": f"{api.url}/offset",
            "auth": {"kind": "basic", "username": "till", "secret_env": "OFFSET_PASSWORD"},
            "pagination": {"style": "offset", "page_size": 5},
            "cursor": by_id,
            **shared,
        },
        {
            "name": "cursor",
            "url": f"{api.url}/cursor",
            "records_path": "$.data.items",
            "auth": {"kind": "api_key", "header": "X-Api-Key", "secret_file": str(key_file)},
            "pagination": {"style": "cursor", "next_path": "meta.next"},
            "cursor": by_id,
            **shared,
        },
        {
            "name": "link",
            "url": f"{api.url}/link",
            "records_path": "sales",
            "auth": {"kind": "bearer", "secret_env": "LINK_TOKEN"},
            "pagination": {"style": "link"},
            "cursor": updated,
            **shared,
        },
    ]


def poll_once(pipeline: Pipeline, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        pipeline.command("poll", "--once", name, "--json"),
        capture_output=True,
        text=True,
        timeout=300,
    )


def runs_of(pipeline: Pipeline, name: str) -> list[dict[str, Any]]:
    return [row for row in pipeline.status() if row["source_name"] == name]


def state_of(pipeline: Pipeline, name: str) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(
        (pipeline.data_dir / "pollers" / f"{name}.json").read_text(encoding="utf-8")
    )
    return state


def assert_landed_exactly_once(
    pipeline: Pipeline, name: str, route: Route, running: bool = False
) -> None:
    """ClickHouse holds every valid record once and quarantines each invalid one, and
    every run is done and accounted for, or failed (or, if `running`, is the newest)."""
    count, orders, total = pipeline.query(
        "SELECT count(), uniqExact(order_id), toString(sum(revenue)) "
        f"FROM tillstream.sales FINAL WHERE source = '{name}'"
    )[0]
    expected = sorted(r["orderRef"] for r in route.valid)
    assert int(count) == int(orders) == len(expected)
    assert Decimal(total or 0) == revenue(route.records)
    landed = pipeline.query(
        f"SELECT order_id FROM tillstream.sales FINAL WHERE source = '{name}' ORDER BY order_id"
    )
    assert [row[0] for row in landed] == expected
    rejected = pipeline.query(
        "SELECT JSONExtractString(original, 'order_id') AS ref, groupUniqArray(reason) "
        "FROM tillstream.quarantine FINAL ARRAY JOIN reasons AS reason "
        f"WHERE source = '{name}' GROUP BY ref ORDER BY ref"
    )
    invalid = sorted(r["orderRef"] for r in route.records if not isinstance(r["qty"], int))
    assert rejected == [[ref, ["invalid_quantity"]] for ref in invalid]
    runs = runs_of(pipeline, name)
    if running and runs and runs[0]["status"] == "processing":
        runs = runs[1:]
    for run in runs:
        assert run["status"] in ("done", "failed"), run
        if run["status"] == "done":
            assert run["valid"] + run["rejected"] + run["duplicates"] == run["rows_read"]


def test_every_pagination_style_and_auth_kind_lands_each_record_once(
    make_pipeline: Callable[..., Pipeline], api: SalesApi, secrets_in_environment: Path
) -> None:
    config = pollers(api, secrets_in_environment, interval_seconds=3600, **idle_window())
    config[2]["timeout_seconds"] = 1.0
    pipeline = make_pipeline(config={"pollers": config, "log_level": "debug"})
    routes = api.routes
    for route in routes.values():
        route.add(23)
    # Intermittent failures on the first run of each: 5xx, a timeout, a 429.
    routes["page"].faults.extend([None, "500", None, "503"])
    routes["offset"].faults.extend(["429"])
    routes["cursor"].faults.extend([None, "slow", None])
    routes["link"].faults.extend(["500", "500"])
    pipeline.start()

    for name in routes:
        done = poll_once(pipeline, name)
        assert done.returncode == 0, done.stdout + done.stderr + pipeline.log_tail()
        entry = json.loads(done.stdout)
        assert (entry["status"], entry["rows_read"]) == ("done", 23)
    # The 429 said "Retry-After: 1": the same request again, a second later, not sooner.
    assert routes["offset"].queries[0] == routes["offset"].queries[1]
    assert routes["offset"].times[1] - routes["offset"].times[0] >= 0.95

    # Records added between polls; the cursor of the last run picks up where it left.
    for route in routes.values():
        route.add(9)
    for name in routes:
        assert poll_once(pipeline, name).returncode == 0
    assert routes["page"].queries[-1]["updated_since"] == "2025-03-14T12:00:0023Z"
    assert routes["offset"].queries[-1]["since_id"] == "23"
    assert routes["cursor"].queries[-1]["since_id"] == "23"
    # An inclusive cursor pulls its newest record again: a duplicate, not a new sale.
    [second, _] = runs_of(pipeline, "page")
    assert (second["rows_read"], second["valid"] + second["rejected"]) == (10, 9)
    assert second["duplicates"] == 1
    [second, _] = runs_of(pipeline, "offset")
    assert (second["rows_read"], second["duplicates"]) == (9, 0)

    # Nothing new: an exclusive cursor reads nothing, an inclusive one its newest again.
    for name in routes:
        assert poll_once(pipeline, name).returncode == 0
    assert runs_of(pipeline, "offset")[0]["rows_read"] == 0
    assert runs_of(pipeline, "link")[0]["rows_read"] == 1

    for name, route in routes.items():
        assert_landed_exactly_once(pipeline, name, route)
        state = state_of(pipeline, name)
        assert state["pending"] is None
        newest = route.records[-1]
        assert state["cursor"] in (newest["updated_at"], str(newest["id"]))
    assert pipeline.metric("tillstream_poller_runs_total", poller="page", status="done") == 3
    assert pipeline.metric("tillstream_poller_requests_total", outcome="rate_limited") == 1
    assert pipeline.metric("tillstream_poller_requests_total", outcome="server_error") == 4
    assert pipeline.metric("tillstream_poller_requests_total", outcome="connection_error") == 1

    status = subprocess.run(
        pipeline.command("status", "--json"), capture_output=True, text=True, check=True
    )
    with urllib.request.urlopen(f"{pipeline.api_url}/metrics") as page:
        metrics_text = page.read().decode()
    assert pipeline.stop() == 0
    log = pipeline.log_file.read_text(encoding="utf-8", errors="replace")
    assert "poll run done poller=link" in log  # the log is the process's, at debug level
    for text in (log, status.stdout, metrics_text):
        for secret in [*SECRETS, BASIC_HEADER]:
            assert secret not in text


def test_a_failed_poll_keeps_its_cursor_and_records_why(
    make_pipeline: Callable[..., Pipeline], api: SalesApi, secrets_in_environment: Path
) -> None:
    [config] = pollers(api, secrets_in_environment, max_attempts=3, **idle_window())[:1]
    wrong_token = {**config, "name": "refused", "auth": {"kind": "bearer", "secret_env": "HOME"}}
    pipeline = make_pipeline(config={"pollers": [config, wrong_token]})
    route = api.routes["page"]
    route.add(12)
    pipeline.start()
    assert poll_once(pipeline, "page").returncode == 0
    route.add(12)

    failures = {
        "bad_json": "page 2 is not valid JSON: Expecting",
        "wrong_shape": "page 2: 'data' is an object, not an array of records",
        "500": "page 2: HTTP 500 after 3 attempts",
    }
    for fault, reason in failures.items():
        route.faults.extend([None, fault, fault, fault])
        failed = poll_once(pipeline, "page")
        assert failed.returncode == 1
        entry = json.loads(failed.stdout)
        assert entry["status"] == "failed"
        assert entry["error"].startswith(reason)
        route.faults.clear()
        assert state_of(pipeline, "page") == {"cursor": "2025-03-14T12:00:0012Z", "pending": None}
    refused = subprocess.run(
        pipeline.command("poll", "--once", "refused"), capture_output=True, text=True
    )
    assert refused.returncode == 1
    assert refused.stdout.strip().endswith(f"page 1: HTTP 401 from {api.url}/page")

    # Nothing of the failed runs was published: the next run brings every record once.
    assert int(pipeline.scalar("SELECT count() FROM tillstream.sales")) == len(
        [r for r in route.records[:12] if isinstance(r["qty"], int)]
    )
    assert poll_once(pipeline, "page").returncode == 0
    assert_landed_exactly_once(pipeline, "page", route)
    history = runs_of(pipeline, "page")
    assert [run["status"] for run in history] == ["done", "failed", "failed", "failed", "done"]
    assert pipeline.metric("tillstream_poller_runs_total", poller="page", status="failed") == 3


def test_a_kill_mid_pagination_then_restart_loses_and_repeats_nothing(
    make_pipeline: Callable[..., Pipeline], api: SalesApi, secrets_in_environment: Path
) -> None:
    [config] = pollers(api, secrets_in_environment, interval_seconds=0.5)[:1]
    pipeline = make_pipeline(config={"pollers": [config]})
    route = api.routes["page"]
    route.add(28)
    route.faults.extend([None, None, "hold"])  # the first run hangs on its third page
    pipeline.start()
    pipeline.wait_for(lambda: api.held.wait(0.1), 60, "the third page to be asked for")
    pipeline.kill()
    api.release.set()
    assert not (pipeline.data_dir / "pollers" / "page.json").exists()

    # On its own schedule after the restart, including records added meanwhile.
    route.add(9)
    pipeline.start()

    def caught_up() -> bool:
        done = [run for run in runs_of(pipeline, "page") if run["status"] == "done"]
        state = state_of(pipeline, "page") if done else {}
        return state.get("cursor") == route.records[-1]["updated_at"]

    pipeline.wait_for(caught_up, 120, "the poller to reach the newest record")
    route.add(6)
    newest = route.records[-1]["updated_at"]
    pipeline.wait_for(
        lambda: state_of(pipeline, "page")["cursor"] == newest, 60, "records added between polls"
    )
    assert_landed_exactly_once(pipeline, "page", route, running=True)
    done = [run for run in runs_of(pipeline, "page") if run["status"] == "done"]
    assert sum(run["rows_read"] - run["duplicates"] for run in done) == len(route.records)


def test_a_run_spooled_before_a_crash_is_published_again_under_its_own_id(
    make_pipeline: Callable[..., Pipeline], api: SalesApi, secrets_in_environment: Path
) -> None:
    """A crash after a run's pages were fetched and spooled, before they were accounted
    for: at start, the spooled rows go out again with the run's id and lines, and only
    then does the cursor move."""
    [config] = pollers(api, secrets_in_environment, interval_seconds=3600, **idle_window())[:1]
    pipeline = make_pipeline(config={"pollers": [config]})
    route = api.routes["page"]
    route.add(10)
    rules = load_settings().cleaning
    rules = rules.model_copy(update={"column_aliases": {**rules.column_aliases, **COLUMNS}})
    chunk = records_chunk(decode_exact_json(json.dumps(route.records)), rules)
    run_id = "5" * 64
    spool = pipeline.data_dir / "pollers" / "page.json"
    spool.parent.mkdir(parents=True)
    pending = {
        "source_id": run_id,
        "seen_at": 1741950000.0,
        "cursor": None,
        "next_cursor": route.records[-1]["updated_at"],
        "pages": 2,
        "chunks": [asdict(chunk)],
    }
    spool.write_text(json.dumps({"cursor": None, "pending": pending}), encoding="utf-8")
    pipeline.start()

    pipeline.wait_for(lambda: state_of(pipeline, "page")["pending"] is None, 60, "the resumed run")
    assert state_of(pipeline, "page")["cursor"] == route.records[-1]["updated_at"]
    [run] = runs_of(pipeline, "page")
    assert (run["source_id"], run["status"], run["rows_read"]) == (run_id, "done", 10)
    assert route.queries == []  # finishing the spooled run asked the API for nothing
    assert_landed_exactly_once(pipeline, "page", route)
    lines = pipeline.query(
        f"SELECT line FROM tillstream.sales FINAL WHERE source_id = '{run_id}' ORDER BY line"
    )
    assert [line for [line] in lines] == [r["id"] for r in route.valid]

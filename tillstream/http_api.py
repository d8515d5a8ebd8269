"""The HTTP endpoint of a running component: /metrics, /health, /api/status and more.

chDB lets one process open a data directory, so commands that read results
while `up` runs (`tillstream status`) ask the running process through here.
The address is written to `<data_dir>/api.json` for them to find.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tillstream.broker import free_port
from tillstream.settings import ConfigError

__all__ = ["HttpApi", "api_file", "read_api_url"]

StatusProvider = Callable[[int], Awaitable[list[dict[str, Any]]]]
HealthProvider = Callable[[], Awaitable[dict[str, Any]]]
QueryProvider = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
PollProvider = Callable[[str], Awaitable[dict[str, Any] | None]]


def api_file(data_dir: Path) -> Path:
    return data_dir / "api.json"


def read_api_url(data_dir: Path) -> str | None:
    """The URL of the running process that owns this data directory, if any."""
    try:
        info = json.loads(api_file(data_dir).read_text(encoding="utf-8"))
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    return str(info["url"])


class HttpApi:
    def __init__(
        self,
        host: str,
        port: int,
        data_dir: Path,
        status: StatusProvider | None,
        health: HealthProvider,
        query: QueryProvider | None,
        poll: PollProvider | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._data_dir = data_dir
        self._status = status
        self._health = health
        self._query = query
        self._poll = poll
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health_check)
        app.router.add_get("/api/status", self._status_page)
        app.router.add_post("/api/query", self._query_page)
        app.router.add_post("/api/pollers/{name}/run", self._poll_page)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = self._port or free_port()
        try:
            await web.TCPSite(self._runner, self._host, port).start()
        except OSError as exc:
            await self._runner.cleanup()
            reason = "it is in use" if exc.errno == errno.EADDRINUSE else str(exc.strerror)
            raise ConfigError(
                f"invalid setting metrics.port: cannot listen on {self._host}:{port}: {reason}"
            ) from None
        self.url = f"http://{self._host}:{port}"
        self._data_dir.mkdir(parents=True, exist_ok=True)
        api_file(self._data_dir).write_text(
            json.dumps({"url": self.url, "pid": os.getpid()}), encoding="utf-8"
        )

    async def stop(self) -> None:
        api_file(self._data_dir).unlink(missing_ok=True)
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, _: web.Request) -> web.Response:
        response = web.Response(body=generate_latest())
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    async def _health_check(self, _: web.Request) -> web.Response:
        health = await self._health()
        return web.json_response(health, status=200 if health.get("ok") else 503)

    async def _status_page(self, request: web.Request) -> web.Response:
        if self._status is None:
            raise web.HTTPNotFound(text="this component keeps no ingestion history")
        limit = int(request.query.get("limit", "50"))
        return web.json_response(await self._status(limit))

    async def _query_page(self, request: web.Request) -> web.Response:
        """A read-only SQL query against the process's ClickHouse, for CLI commands and tests.

        The body is the SQL text, or JSON `{"sql": ..., "parameters": {...}}` with
        values bound server-side (`{name:Type}` placeholders), never spliced in.
        """
        if self._query is None:
            raise web.HTTPNotFound(text="this component has no ClickHouse connection")
        if request.content_type == "application/json":
            body = await request.json()
            sql, parameters = str(body["sql"]), dict(body.get("parameters") or {})
        else:
            sql, parameters = await request.text(), {}
        try:
            result = await self._query(sql, parameters)
        except Exception as exc:
            return web.json_response({"error": str(exc).splitlines()[0]}, status=400)
        return web.json_response(result, dumps=lambda value: json.dumps(value, default=str))

    async def _poll_page(self, request: web.Request) -> web.Response:
        """One run of a poller, answered once it is accounted for or failed: the run's
        history entry (`tillstream poll --once` while this process runs)."""
        if self._poll is None:
            raise web.HTTPNotFound(text="this component runs no pollers")
        name = request.match_info["name"]
        entry = await self._poll(name)
        if entry is None:
            raise web.HTTPNotFound(text=f"no poller is named {name}")
        return web.json_response(entry)

"""Reading results from the command line, whether or not `up` is running.

chDB lets one process open a data directory, so while `up` runs, commands ask
it through its HTTP API; otherwise they open the database themselves.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from types import TracebackType
from typing import Any

from sinks.database import Database
from sinks.history import IngestionHistory
from sinks.schema import migrate
from tillstream.http_api import read_api_url
from tillstream.settings import Settings

__all__ = ["ResultError", "ResultReader"]

log = logging.getLogger(__name__)


class ResultError(Exception):
    """The running process refused a query; the message is its one-line reason."""


class ResultReader:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._url: str | None = None
        self._database: Database | None = None

    @property
    def database_name(self) -> str:
        return self._settings.clickhouse.database

    async def __aenter__(self) -> ResultReader:
        url = read_api_url(self._settings.data_dir)
        if url is not None and self._answers(url):
            self._url = url
            return self
        self._database = Database(self._settings.clickhouse_url, self._settings.clickhouse)
        await migrate(self._database)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._database is not None:
            await self._database.close()

    def _answers(self, url: str) -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5):  # noqa: S310 - our loopback API
                return True
        except OSError:
            log.warning("no answer from %s; reading the database directly", url)
            return False

    def _get(self, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(  # noqa: S310 - our loopback API
            f"{self._url}{path}",
            data=None if body is None else json.dumps(body, default=str).encode(),
            headers={"Content-Type": "application/json"},
            method="GET" if body is None else "POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
                return json.load(response)
        except urllib.error.HTTPError as exc:
            raise ResultError(json.loads(exc.read() or b"{}").get("error", str(exc))) from None

    def kafka_bootstrap(self) -> str:
        """Where to publish: the broker of the running process, else the configured one."""
        if self._url is not None:
            return str(self._get("/health")["kafka"])
        return self._settings.kafka.bootstrap_servers

    async def query(self, sql: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        """Rows of a read-only query as dicts; values bound server-side."""
        if self._database is not None:
            result = await self._database.read_only_query(sql, parameters)
        else:
            result = self._get("/api/query", {"sql": sql, "parameters": parameters})
        return [dict(zip(result["columns"], row, strict=True)) for row in result["rows"]]

    async def status(self, limit: int) -> list[dict[str, Any]]:
        if self._database is None:
            rows: list[dict[str, Any]] = self._get(f"/api/status?limit={int(limit)}")
            return rows
        return [entry.to_json() for entry in await IngestionHistory(self._database).recent(limit)]

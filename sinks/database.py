"""A ClickHouse connection confined to one thread, usable from asyncio.

chDB has no async client and wants one client per thread, so each Database owns
a single worker thread and its client; coroutines hand it work with `run`.
The same code serves a ClickHouse server (`http://`) and chDB (`chdb://`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlsplit

import clickhouse_connect
import pandas as pd
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import OperationalError

from tillstream.settings import ClickHouseConfig

__all__ = ["Database", "DatabaseUnavailableError", "QueryRunner", "is_retryable"]

T = TypeVar("T")

QueryRunner = Callable[[str, dict[str, Any]], Awaitable[list[dict[str, Any]]]]
"""Runs read-only SQL with bound parameters, rows as dicts: through a running `up`
or on a Database, so read-side code works either way."""

_chdb_lock = threading.Lock()


class DatabaseUnavailableError(Exception):
    """ClickHouse could not be reached; worth retrying later."""


def is_retryable(exc: BaseException) -> bool:
    """Connection trouble is retried; bad SQL or bad data is not."""
    return isinstance(exc, OperationalError | DatabaseUnavailableError | OSError)


class Database:
    """One ClickHouse client on its own thread; `name` is the database tables live in."""

    def __init__(self, url: str, config: ClickHouseConfig) -> None:
        self.url = url
        self.name = config.database
        self._config = config
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self._client: Client | None = None

    def _connect(self) -> Client:
        if self.url.startswith("chdb://"):
            with _chdb_lock:
                return clickhouse_connect.get_client(dsn=self.url)
        parts = urlsplit(self.url)
        try:
            return clickhouse_connect.get_client(
                interface=parts.scheme,
                host=parts.hostname or "localhost",
                port=parts.port or (8443 if parts.scheme == "https" else 8123),
                username=self._config.username,
                password=self._config.password.get_secret_value(),
            )
        except OperationalError as exc:
            raise DatabaseUnavailableError(f"ClickHouse at {self.url} is unreachable") from exc

    def _client_on_thread(self) -> Client:
        if self._client is None:
            self._client = self._connect()
        return self._client

    async def run(self, work: Callable[[Client], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: work(self._client_on_thread()))

    async def command(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        return await self.run(lambda client: client.command(sql, parameters=parameters))

    async def rows(self, sql: str, parameters: dict[str, Any] | None = None) -> Sequence[Any]:
        return await self.run(lambda client: client.query(sql, parameters=parameters).result_rows)

    async def frame(self, sql: str, parameters: dict[str, Any] | None = None) -> pd.DataFrame:
        return await self.run(lambda client: client.query_df(sql, parameters=parameters))

    async def records(
        self, sql: str, parameters: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Rows as dicts keyed by column name."""

        def query(client: Client) -> list[dict[str, Any]]:
            result = client.query(sql, parameters=parameters)
            return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]

        return await self.run(query)

    async def read_only_query(
        self, sql: str, parameters: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Column names and rows of a query that may not change anything."""

        def query(client: Client) -> dict[str, Any]:
            result = client.query(sql, parameters=parameters, settings={"readonly": 1})
            return {"columns": list(result.column_names), "rows": result.result_rows}

        return await self.run(query)

    async def insert_json_rows(self, table: str, block: bytes, dedup_token: str) -> None:
        """Insert newline-separated JSON objects; a repeated token is a no-op."""
        await self.run(
            lambda client: client.raw_insert(
                f"{self.name}.{table}",
                insert_block=block,
                fmt="JSONEachRow",
                settings={
                    "insert_deduplication_token": dedup_token,
                    "input_format_skip_unknown_fields": 1,
                    "date_time_input_format": "best_effort",
                },
            )
        )

    async def close(self) -> None:
        def close_client() -> None:
            if self._client is not None:
                self._client.close()
                self._client = None

        await asyncio.get_running_loop().run_in_executor(self._executor, close_client)
        self._executor.shutdown(wait=True)

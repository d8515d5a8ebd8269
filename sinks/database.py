"""A ClickHouse connection confined to one thread, usable from asyncio.

chDB has no async client and wants one client per thread, so each Database owns
a single worker thread and its client; coroutines hand it work with `run`.
The same code serves a ClickHouse server (`http://`) and chDB (`chdb://`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlsplit

import clickhouse_connect
import pandas as pd
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError, ProgrammingError

from tillstream.settings import ClickHouseConfig

__all__ = [
    "Database",
    "DatabaseUnavailableError",
    "QueryRunner",
    "error_code",
    "first_line",
    "in_array",
    "is_refused_data",
    "is_retryable",
    "retry_while_unavailable",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

QueryRunner = Callable[[str, dict[str, Any]], Awaitable[list[dict[str, Any]]]]
"""Runs read-only SQL with bound parameters, rows as dicts: through a running `up`
or on a Database, so read-side code works either way."""

_chdb_lock = threading.Lock()


class DatabaseUnavailableError(Exception):
    """ClickHouse could not be reached; worth retrying later."""


_REFUSED_DATA_CODES = frozenset({6, 26, 27, 38, 41, 53, 69, 70, 72, 117, 131, 349, 407, 691})
"""ClickHouse error codes that mean "this data cannot go in": CANNOT_PARSE_*,
TYPE_MISMATCH, ARGUMENT_OUT_OF_BOUND, CANNOT_CONVERT_TYPE, INCORRECT_DATA,
TOO_LARGE_STRING_SIZE, CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN, DECIMAL_OVERFLOW,
UNKNOWN_ELEMENT_OF_ENUM."""
_BAD_SQL_CODES = frozenset({16, 36, 43, 46, 47, 60, 62, 81})
"""NO_SUCH_COLUMN_IN_TABLE, BAD_ARGUMENTS, ILLEGAL_TYPE_OF_ARGUMENT, UNKNOWN_FUNCTION,
UNKNOWN_IDENTIFIER, UNKNOWN_TABLE, SYNTAX_ERROR, UNKNOWN_DATABASE: a bug, not an outage."""
_CODE = re.compile(r"Code: (\d+)\.")


def in_array(expression: str, parameter: str, element_type: str) -> str:
    """`expression IN` the array query parameter `parameter`, the set built by a subquery.
    chDB 4.4 hangs on `IN {p:Array(...)}` once the array passes about 140,000 values
    (130,000 took 0.15 s, 145,000 had not finished after 30 s), while this form took
    1.2 s for a million; a reconciliation of late sales passes hundreds of thousands."""
    return f"{expression} IN (SELECT arrayJoin({{{parameter}:Array({element_type})}}))"


def error_code(exc: BaseException) -> int | None:
    """The ClickHouse error code an exception carries, from a server or from chDB."""
    found = _CODE.search(str(exc))
    return int(found[1]) if found else None


def is_refused_data(exc: BaseException) -> bool:
    """ClickHouse refused the content of an insert: splitting the batch finds the culprit."""
    return isinstance(exc, DatabaseError) and error_code(exc) in _REFUSED_DATA_CODES


def is_retryable(exc: BaseException) -> bool:
    """Connection and storage trouble is retried: an unreachable server, and equally a
    chDB whose files cannot be written (a full or read-only disk, code 1001 and the
    like). Bad data and bad SQL are not."""
    if isinstance(exc, OperationalError | DatabaseUnavailableError | OSError):
        return True
    if isinstance(exc, ProgrammingError) or not isinstance(exc, DatabaseError):
        return False
    return error_code(exc) not in _REFUSED_DATA_CODES | _BAD_SQL_CODES


def first_line(exc: BaseException) -> str:
    """An error for a log line: chDB's messages run over several lines."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


async def retry_while_unavailable(
    work: Callable[[], Awaitable[T]],
    what: str,
    max_delay: float,
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """Run `work` until it succeeds, waiting out retryable errors with capped, jittered
    backoff; anything else is raised. The caller waiting is the backpressure."""
    delay = 0.1
    while True:
        try:
            return await work()
        except Exception as exc:
            if not is_retryable(exc):
                raise
            if on_retry is not None:
                on_retry(exc)
            log.warning("%s failed (%s); retrying in %.1fs", what, first_line(exc), delay)
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))  # noqa: S311 - jitter
            delay = min(delay * 2, max_delay)


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

    async def insert_json_rows(self, table: str, rows: list[bytes], attempt: int = 0) -> None:
        """Insert JSON objects, one per row. The same rows in the same order give the same
        deduplication token, so inserting them again is a no-op. They are joined and
        hashed in the client's thread: hashing lets go of the GIL, and the event loop
        goes on meanwhile.

        A retry (`attempt` above 0) has a token of its own: ClickHouse can keep a failed
        insert's token without its rows (seen when its storage failed mid-insert), and
        would then drop the retry as a duplicate. If the failed attempt did land after
        all, the retry's rows are copies of the same identities, which every table
        replaces and every count of lines ignores."""

        def insert(client: Client) -> None:
            block = b"\n".join(rows)
            token = hashlib.blake2b(table.encode(), digest_size=16)
            token.update(block)
            token.update(b"\n")
            if attempt:
                token.update(f"attempt {attempt}".encode())
            client.raw_insert(
                f"{self.name}.{table}",
                insert_block=block,
                fmt="JSONEachRow",
                settings={
                    "insert_deduplication_token": token.hexdigest(),
                    "input_format_skip_unknown_fields": 1,
                    "date_time_input_format": "best_effort",
                },
            )

        await self.run(insert)

    async def close(self) -> None:
        def close_client() -> None:
            if self._client is not None:
                self._client.close()
                self._client = None

        await asyncio.get_running_loop().run_in_executor(self._executor, close_client)
        self._executor.shutdown(wait=True)

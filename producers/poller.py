"""Poller: one HTTP API's sales, pulled on a schedule and published like a file's rows.

A poll run fetches every page (up to `max_pages`) before it publishes or records
anything, so a failure or a crash mid-pagination leaves nothing downstream and the
cursor where it was: the next run starts again from it (a failure is then recorded
in the history with its reason). The fetched rows are then written to a spool
(`<data_dir>/pollers/<name>.json`, atomically) before they are published, so a run
that crashed after that point is published again with the same source id and lines
after a restart, and its rows replace themselves downstream, exactly as a file
left in the inbox does. The cursor moves, in the same file, only once the history
accounts for every record of the run (clean + rejected + duplicates = read).

A small file in the data directory, rather than ClickHouse, holds the cursor because
the spool must live there anyway and one atomic rename then moves both together.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import SecretStr

from producers.polling import (
    PageError,
    backoff_delay,
    json_at,
    later_cursor,
    next_link,
    records_chunk,
    redact,
    retry_after_seconds,
    same_origin,
    seconds_until_active,
)
from producers.readers import RowChunk, UnreadableFileError, decode_exact_json
from producers.source_publisher import SourcePublisher, raw_messages
from sinks.history import HistoryEntry, SourceStatus
from tillstream import metrics
from tillstream.records import SourceRef
from tillstream.settings import CleaningRules, ConfigError, PollerConfig

__all__ = ["PollError", "Poller", "state_file"]

log = logging.getLogger(__name__)

MAX_RETRY_AFTER_SECONDS = 3600.0
MAX_PAGE_BYTES = 64 * 2**20
"""A page is held whole to be parsed; one larger than this fails the run instead of
the process. Smaller pages (`page_size`) are the remedy."""


class PollError(Exception):
    """The API did not give a page (a client error, or retries used up)."""


def state_file(data_dir: Path, name: str) -> Path:
    return data_dir / "pollers" / f"{name}.json"


@dataclass
class _PendingRun:
    """A run whose rows were fetched but are not yet accounted for: what it publishes."""

    source_id: str
    seen_at: float
    cursor: str | None
    next_cursor: str | None
    pages: int
    chunks: list[dict[str, Any]]

    def row_chunks(self) -> list[RowChunk]:
        return [
            RowChunk(
                chunk["columns"],
                chunk["rows"],
                chunk["lines"],
                [(line, text) for line, text in chunk["unparseable"]],
            )
            for chunk in self.chunks
        ]


@dataclass
class _State:
    """What the state file holds: the committed cursor and the run in flight, if any."""

    cursor: str | None
    pending: _PendingRun | None = None


def _run_id(name: str, cursor: str | None, started: datetime) -> str:
    identity = "\0".join(["poll", name, cursor if cursor is not None else "", started.isoformat()])
    return hashlib.sha256(identity.encode()).hexdigest()


class Poller:
    """Polls one API: `poll_once` is one run, `run` repeats it on the schedule."""

    def __init__(
        self,
        config: PollerConfig,
        secret: SecretStr,
        rules: CleaningRules,
        sources: SourcePublisher,
        data_dir: Path,
    ) -> None:
        self.config = config
        self.name = config.name
        # As in `cleaning`: a column named here gets these spellings instead of its own.
        aliases = {**rules.column_aliases, **config.column_aliases}
        self._rules = rules.model_copy(update={"column_aliases": aliases})
        self._sources = sources
        self._state_path = state_file(data_dir, config.name)
        self._lock = asyncio.Lock()
        self._headers, self._secrets = _auth_headers(config, secret)
        self._random = random.Random()  # noqa: S311 - jitter, not security
        for status in ("done", "failed"):
            metrics.POLLER_RUNS.labels(self.name, status)
        metrics.POLLER_RECORDS_READ.labels(self.name)

    # --- schedule -------------------------------------------------------------------

    async def run(self) -> None:
        """Forever: one run per `interval_seconds`, started only inside the active window.
        A failed run is recorded and the schedule goes on."""
        config = self.config
        try:
            await self._recover()
        except Exception:
            log.exception("poller %s: the run left by a restart stopped", self.name)
        while True:
            wait = seconds_until_active(
                datetime.now(UTC), config.active_from, config.active_until, config.timezone
            )
            if wait > 0:
                log.info("poller %s waits %.0fs for its active window", self.name, wait)
                await asyncio.sleep(wait)
                continue
            started = time.monotonic()
            try:
                await self.poll_once()
            except Exception:
                log.exception("poller %s: run stopped; it is redone on schedule", self.name)
            await asyncio.sleep(max(0.0, config.interval_seconds - (time.monotonic() - started)))

    # --- one run --------------------------------------------------------------------

    async def poll_once(self) -> HistoryEntry:
        """One run: a run left unfinished by a crash is finished first and is this run."""
        async with self._lock:
            state = await asyncio.to_thread(self._load)
            if state.pending is not None:
                return await self._resume(state, state.pending)
            return await self._run(state)

    async def _recover(self) -> None:
        """At start, whatever the window: finish a run left by a crash, so its records are
        not held back until the next run."""
        async with self._lock:
            state = await asyncio.to_thread(self._load)
            if state.pending is not None:
                await self._resume(state, state.pending)

    async def _resume(self, state: _State, pending: _PendingRun) -> HistoryEntry:
        log.info("poller %s resumes run id=%s after a restart", self.name, pending.source_id[:12])
        return await self._finish(state, pending)

    async def _run(self, state: _State) -> HistoryEntry:
        started = datetime.now(UTC)
        clock = time.monotonic()
        source = SourceRef("poll", _run_id(self.name, state.cursor, started), self.name)
        history = self._sources.history
        try:
            records, pages = await self._fetch(state.cursor)
            chunks = [
                records_chunk(records[i : i + self.config.chunk_rows], self._rules, i + 1)
                for i in range(0, len(records), self.config.chunk_rows)
            ]
            _messages(source, chunks, started.timestamp())  # a record too large fails here
        except (PageError, PollError, UnreadableFileError) as exc:
            reason = redact(" ".join(str(exc).split()), self._secrets)
            entry = await history.start(source, started, started)
            entry = await history.fail(entry, reason)
            metrics.POLLER_RUNS.labels(self.name, "failed").inc()
            metrics.POLLER_RUN_SECONDS.labels(self.name).observe(time.monotonic() - clock)
            log.warning(
                "poll run failed poller=%s id=%s reason=%s", self.name, source.id[:12], reason
            )
            return entry
        next_cursor = self._next_cursor(state.cursor, records)
        pending = _PendingRun(
            source_id=source.id,
            seen_at=started.timestamp(),
            cursor=state.cursor,
            next_cursor=next_cursor,
            pages=pages,
            chunks=[asdict(chunk) for chunk in chunks],
        )
        state.pending = pending
        await asyncio.to_thread(self._save, state)
        metrics.POLLER_RECORDS_READ.labels(self.name).inc(len(records))
        return await self._finish(state, pending, clock)

    async def _finish(
        self, state: _State, pending: _PendingRun, clock: float | None = None
    ) -> HistoryEntry:
        """Publish the spooled rows (again, after a restart), wait for their accounting,
        then move the cursor."""
        clock = time.monotonic() if clock is None else clock
        history = self._sources.history
        source = SourceRef("poll", pending.source_id, self.name)
        entry = await history.get(pending.source_id)
        if entry is None:
            seen_at = datetime.fromtimestamp(pending.seen_at, UTC)
            entry = await history.start(source, seen_at, seen_at)
        if entry.status is not SourceStatus.DONE:
            chunks = pending.row_chunks()
            await self._sources.publish(source, _messages(source, chunks, pending.seen_at))
            rows = sum(len(chunk.rows) + len(chunk.unparseable) for chunk in chunks)
            entry = await history.finish_reading(entry, rows)
            entry = await self._sources.wait_until_done(pending.source_id)
        state.cursor = pending.next_cursor
        state.pending = None
        await asyncio.to_thread(self._save, state)
        elapsed = time.monotonic() - clock
        metrics.POLLER_RUNS.labels(self.name, "done").inc()
        metrics.POLLER_RUN_SECONDS.labels(self.name).observe(elapsed)
        metrics.POLLER_LAST_SUCCESS.labels(self.name).set(time.time())
        for outcome, count in (
            ("clean", entry.valid),
            ("rejected", entry.rejected),
            ("duplicate", entry.duplicates),
        ):
            metrics.POLLER_ROWS.labels(self.name, outcome).inc(count)
        log.info(
            "poll run done poller=%s id=%s pages=%d read=%s valid=%d rejected=%d "
            "duplicates=%d cursor=%s seconds=%.2f",
            self.name,
            pending.source_id[:12],
            pending.pages,
            entry.rows_read,
            entry.valid,
            entry.rejected,
            entry.duplicates,
            state.cursor,
            elapsed,
        )
        return entry

    def _next_cursor(self, cursor: str | None, records: list[Any]) -> str | None:
        if self.config.cursor is None:
            return cursor
        for record in records:
            if not isinstance(record, dict):
                continue
            try:
                value = json_at(record, self.config.cursor.field)
            except KeyError:
                continue
            if isinstance(value, str) and value:  # numbers too: decoded as their text
                cursor = later_cursor(cursor, str(value))
        return cursor

    # --- HTTP -----------------------------------------------------------------------

    async def _fetch(self, cursor: str | None) -> tuple[list[Any], int]:
        """Every record of a run's pages, in order; raises PageError or PollError."""
        config = self.config
        paging = config.pagination
        params = dict(config.params)
        if config.cursor is not None and cursor:
            params[config.cursor.param] = cursor
        timeout = aiohttp.ClientTimeout(total=config.timeout_seconds)
        records: list[Any] = []
        url: str = config.url
        query: dict[str, str] = dict(params)
        async with aiohttp.ClientSession(headers=self._headers, timeout=timeout) as session:
            for page in range(1, config.max_pages + 1):
                if paging.style == "page":
                    query = {
                        **params,
                        paging.page_param: str(paging.first_page + page - 1),
                        paging.size_param: str(paging.page_size),
                    }
                elif paging.style == "offset":
                    query = {
                        **params,
                        paging.offset_param: str((page - 1) * paging.page_size),
                        paging.limit_param: str(paging.page_size),
                    }
                body, page_url, link_header = await self._request(session, url, query, page)
                document = _decode(body, page)
                found = _records(document, config.records_path, page)
                records.extend(found)
                if paging.style == "none":
                    return records, page
                if paging.style in ("page", "offset"):
                    if len(found) < paging.page_size:
                        return records, page
                elif paging.style == "cursor":
                    token = _token(document, paging.next_path, page)
                    if token is None:
                        return records, page
                    query = {**params, paging.cursor_param: token}
                else:
                    link = next_link(link_header, page_url)
                    if link is None:
                        return records, page
                    if not same_origin(config.url, link):
                        raise PageError(f"page {page}: the next link leaves {config.url}'s host")
                    url, query = link, {}
        log.info("poller %s stopped at max_pages=%d; the next run goes on", self.name, page)
        return records, config.max_pages

    async def _request(
        self, session: aiohttp.ClientSession, url: str, query: dict[str, str], page: int
    ) -> tuple[bytes, str, str | None]:
        """A page's body, its final URL and its `Link` header, retrying what may pass."""
        config = self.config
        attempt = 0
        while True:
            attempt += 1
            wait: float | None = None
            try:
                async with session.request(config.method, url, params=query) as response:
                    body = await _read_bounded(response, page)
                    status, headers, final = response.status, response.headers, str(response.url)
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome = "connection_error"
                problem = f"{type(exc).__name__} {' '.join(str(exc).split())}".strip()
            else:
                if 200 <= status < 300:
                    metrics.POLLER_REQUESTS.labels(self.name, "ok").inc()
                    return body, final, headers.get("Link")
                problem = f"HTTP {status}"
                if status == 429:
                    outcome = "rate_limited"
                    wait = retry_after_seconds(headers.get("Retry-After"), datetime.now(UTC))
                elif status >= 500:
                    outcome = "server_error"
                else:
                    metrics.POLLER_REQUESTS.labels(self.name, "client_error").inc()
                    raise PollError(f"page {page}: {problem} from {url}")
            metrics.POLLER_REQUESTS.labels(self.name, outcome).inc()
            problem = redact(problem, self._secrets)
            if attempt == config.max_attempts:
                raise PollError(f"page {page}: {problem} after {attempt} attempts")
            if wait is None:
                wait = backoff_delay(
                    attempt - 1,
                    config.backoff_seconds,
                    config.backoff_max_seconds,
                    self._random.random(),
                )
            wait = min(wait, MAX_RETRY_AFTER_SECONDS)
            log.warning(
                "poller %s page %d: %s; attempt %d of %d in %.2fs",
                self.name,
                page,
                problem,
                attempt + 1,
                config.max_attempts,
                wait,
            )
            await asyncio.sleep(wait)

    # --- state ----------------------------------------------------------------------

    def _load(self) -> _State:
        initial = (self.config.cursor.initial or None) if self.config.cursor else None
        try:
            text = self._state_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return _State(cursor=initial)
        try:
            data = json.loads(text)
            pending = data.get("pending")
            return _State(
                cursor=data["cursor"],
                pending=_PendingRun(**pending) if pending else None,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"poller {self.name}: state file {self._state_path} is damaged ({exc}); "
                "restore or remove it"
            ) from None

    def _save(self, state: _State) -> None:
        """Atomically: the old state or the new one, never half of it."""
        self._state_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self._state_path.with_suffix(".json.tmp")
        document = {
            "cursor": state.cursor,
            "pending": asdict(state.pending) if state.pending is not None else None,
        }
        with temporary.open("w", encoding="utf-8") as out:
            json.dump(document, out, ensure_ascii=False)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self._state_path)
        with contextlib.suppress(OSError):
            directory = os.open(self._state_path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)


def _messages(source: SourceRef, chunks: list[RowChunk], seen_at: float) -> list[bytes]:
    values: list[bytes] = []
    for chunk in chunks:
        values += raw_messages(chunk, source, len(values), seen_at)
    return values


async def _read_bounded(response: aiohttp.ClientResponse, page: int) -> bytes:
    body = bytearray()
    async for block in response.content.iter_chunked(2**16):
        body += block
        if len(body) > MAX_PAGE_BYTES:
            raise PageError(f"page {page} is larger than {MAX_PAGE_BYTES // 2**20} MiB")
    return bytes(body)


def _decode(body: bytes, page: int) -> Any:
    try:
        return decode_exact_json(body.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise PageError(f"page {page} is not UTF-8 text") from None
    except (ValueError, RecursionError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise PageError(f"page {page} is not valid JSON: {reason}") from None


def _records(document: Any, path: str, page: int) -> list[Any]:
    try:
        found = json_at(document, path)
    except KeyError as exc:
        raise PageError(f"page {page} has no records at {path!r} (no {exc.args[0]!r})") from None
    if not isinstance(found, list):
        kind = "an object" if isinstance(found, dict) else type(found).__name__
        where = repr(path) if path else "the top level"
        raise PageError(f"page {page}: {where} is {kind}, not an array of records")
    return found


def _token(document: Any, path: str, page: int) -> str | None:
    try:
        token = json_at(document, path)
    except KeyError:
        return None
    if token is None or token == "":
        return None
    if not isinstance(token, str):  # numbers are text too, as decoded
        raise PageError(f"page {page}: the next cursor at {path!r} is not text or a number")
    return str(token)


def _auth_headers(config: PollerConfig, secret: SecretStr) -> tuple[dict[str, str], list[str]]:
    """Request headers, and every form of the secret that must never leave the poller."""
    headers = dict(config.headers)
    value = secret.get_secret_value()
    auth = config.auth
    if auth.kind == "bearer":
        headers["Authorization"] = f"Bearer {value}"
    elif auth.kind == "basic":
        headers["Authorization"] = aiohttp.BasicAuth(auth.username, value).encode()
    elif auth.kind == "api_key":
        headers[auth.header] = value
    secrets = [value]
    if auth.kind != "none":
        secrets.append(headers.get("Authorization", value))
        secrets.sort(key=len, reverse=True)
    return headers, secrets

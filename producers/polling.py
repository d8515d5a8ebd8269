"""The pure rules of HTTP polling: JSON paths, pagination links, backoff, windows, cursors.

Kept apart from the `Poller`'s I/O so each rule is tested on its own, property-based
where its input is open-ended.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from datetime import time as clock
from decimal import Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urljoin, urlsplit
from zoneinfo import ZoneInfo

from processors.cleaning import map_columns
from producers.readers import RowChunk, json_cell, json_text
from tillstream.settings import CleaningRules

__all__ = [
    "PageError",
    "json_at",
    "next_link",
    "same_origin",
    "retry_after_seconds",
    "backoff_delay",
    "in_window",
    "seconds_until_active",
    "later_cursor",
    "flatten",
    "records_chunk",
    "redact",
]

REDACTED = "***"


class PageError(Exception):
    """A page that is not what the configuration says (bad JSON, wrong shape): the
    run fails with this one-line reason and the cursor stays where it was."""


def _steps(path: str) -> list[str]:
    path = path.strip()
    if path.startswith("$"):
        path = path[1:].lstrip(".")
    return [step for step in path.split(".") if step] if path else []


def json_at(document: Any, path: str) -> Any:
    """The value at a dotted path (`data.items`, `results.0`, `$.meta.next`); `""` or
    `$` is the document itself. Raises KeyError naming the first missing step."""
    value = document
    for step in _steps(path):
        if isinstance(value, dict) and step in value:
            value = value[step]
        elif isinstance(value, list) and step.isdigit() and int(step) < len(value):
            value = value[int(step)]
        else:
            raise KeyError(step)
    return value


_PARAM = re.compile(r';\s*([!#$%&\'*+\-.^_`|~0-9A-Za-z]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)')


def next_link(header: str | None, base_url: str) -> str | None:
    """The `rel="next"` target of an RFC 8288 `Link` header, resolved against the
    page's URL; None when there is none."""
    if not header:
        return None
    for target, parameters in _link_values(header):
        for name, value in _PARAM.findall(parameters):
            if name.lower() != "rel":
                continue
            relations = value.strip('"').lower().split()
            if "next" in relations:
                return urljoin(base_url, target.strip())
    return None


def _link_values(header: str) -> Iterator[tuple[str, str]]:
    """(target, parameters) of each link-value; a comma inside a quoted parameter
    (`title="a, b"`) does not end it."""
    position = 0
    while (start := header.find("<", position)) >= 0:
        end = header.find(">", start)
        if end < 0:
            return
        cursor, quoted = end + 1, False
        while cursor < len(header):
            char = header[cursor]
            if quoted and char == "\\":
                cursor += 1
            elif char == '"':
                quoted = not quoted
            elif char == "," and not quoted:
                break
            cursor += 1
        yield header[start + 1 : end], header[end + 1 : cursor]
        position = cursor + 1


def same_origin(url: str, other: str) -> bool:
    """Credentials go only where the configuration sent them: same scheme, host and port."""
    a, b = urlsplit(url), urlsplit(other)
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """`Retry-After` as seconds to wait: delay-seconds or an HTTP date; None if absent or
    unreadable (the caller then backs off as for any other retry)."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # not `¹`, which isdigit() also accepts
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def backoff_delay(attempt: int, base: float, cap: float, jitter: float) -> float:
    """Exponential backoff for retry `attempt` (0 first), capped, times a jitter factor
    drawn from [0.5, 1.5) (`jitter` in [0, 1)), so pollers that failed together do
    not retry together."""
    return min(cap, base * 2 ** min(attempt, 62)) * (0.5 + jitter)


def in_window(moment: clock, start: clock | None, end: clock | None) -> bool:
    """Whether a time of day falls in [start, end); a window may wrap midnight."""
    if start is None or end is None:
        return True
    if start < end:
        return start <= moment < end
    return moment >= start or moment < end


def seconds_until_active(
    now: datetime, start: clock | None, end: clock | None, zone: str = "UTC"
) -> float:
    """0 inside the window, else the seconds until it next opens (wall clock in `zone`)."""
    local = now.astimezone(ZoneInfo(zone))
    if start is None or in_window(local.time().replace(tzinfo=None), start, end):
        return 0.0
    opens = datetime.combine(local.date(), start, tzinfo=local.tzinfo)
    if opens <= local:
        opens = datetime.combine(local.date() + timedelta(days=1), start, tzinfo=local.tzinfo)
    return max(0.0, (opens.astimezone(UTC) - now.astimezone(UTC)).total_seconds())


def _cursor_key(value: str) -> tuple[int, Decimal, str]:
    try:
        number = Decimal(value)
    except InvalidOperation:
        return (1, Decimal(0), value)
    if not number.is_finite():
        return (1, Decimal(0), value)
    return (0, number, value)


def later_cursor(current: str | None, candidate: str) -> str:
    """The greater of two cursor values: as numbers when both are numbers (ids), else as
    text (ISO timestamps in one format order as text)."""
    if current is None:
        return candidate
    return max(current, candidate, key=_cursor_key)


def flatten(record: dict[str, Any]) -> dict[str, Any]:
    """Nested objects as dotted keys (`customer.email`), so a mapping can name them;
    arrays stay one value."""
    flat: dict[str, Any] = {}
    pending: list[tuple[str, dict[str, Any]]] = [("", record)]
    while pending:
        prefix, value = pending.pop(0)
        for key, member in value.items():
            name = f"{prefix}{key}"
            if isinstance(member, dict) and member:
                pending.append((f"{name}.", member))
            else:
                flat.setdefault(name, member)
    return flat


def records_chunk(records: Sequence[Any], rules: CleaningRules, first_line: int = 1) -> RowChunk:
    """Records of a run as the rows a file would give: columns are the union of the
    (flattened) keys, those the rules map renamed to their canonical name so the
    cleaning stage maps them the same way (an unmapped key spelt like a canonical
    column another key fills is left out, so no name is there twice); an element that
    is not an object is an unparseable record, as in a JSON file. `records` are as
    `decode_exact_json` gives them, numbers still their source text."""
    flat: list[dict[str, Any] | None] = [
        flatten(record) if isinstance(record, dict) else None for record in records
    ]
    keys = list(dict.fromkeys(key for record in flat if record for key in record))
    canonical = {field: name for name, field in map_columns(keys, rules).items()}
    ordered = [key for key in keys if key in canonical] + [
        key for key in keys if key not in canonical and key not in rules.column_aliases
    ]
    # A key may hold a lone surrogate (`"\ud800"`), which cannot be sent as UTF-8.
    columns = [json_cell(canonical.get(key, key)) or "" for key in ordered]
    rows: list[list[str | None]] = []
    lines: list[int] = []
    unparseable: list[tuple[int, str]] = []
    for line, (record, original) in enumerate(zip(flat, records, strict=True), first_line):
        if record is None:
            unparseable.append((line, json_text(original)))
        else:
            rows.append([json_cell(record.get(key)) for key in ordered])
            lines.append(line)
    return RowChunk(columns, rows, lines, unparseable)


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret replaced, for anything that leaves the poller."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text

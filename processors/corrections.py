"""Correcting quarantined rows by hand: export to CSV, edit, drop back in the inbox.

The export carries each row's quarantine id and its fields as received, made
safe for spreadsheets (a cell that would start a formula gets a leading `'`).
A file dropped back with a `quarantine_id` column is not new data: each row
goes through the pipeline again under the provenance of the quarantined row
it corrects, like a replay, and leaves the quarantine as `resolved` if it is
valid now; otherwise that row is quarantined again with its new reasons.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterable
from typing import Any

from tillstream.records import QuarantineStatus, RawChunk, SourceRef

__all__ = ["ID_COLUMN", "export_csv", "corrected_chunks", "is_correction", "spreadsheet_safe"]

ID_COLUMN = "quarantine_id"
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: str | None) -> str:
    """Text a spreadsheet shows as text: formula-looking cells get a leading `'`."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _unsafe(value: str) -> str:
    """Undo `spreadsheet_safe` on a cell that comes back."""
    return value[1:] if value.startswith("'") and value[1:].startswith(_FORMULA_STARTS) else value


def export_csv(letters: Iterable[dict[str, Any]]) -> str:
    """The rows whose original could be split into fields, with their ids first."""
    rows = [(letter["id"], json.loads(letter["original"])) for letter in letters]
    rows = [(letter_id, original) for letter_id, original in rows if isinstance(original, dict)]
    columns = list(dict.fromkeys(column for _, original in rows for column in original))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([ID_COLUMN, *columns])
    for letter_id, original in rows:
        writer.writerow(
            [letter_id, *(spreadsheet_safe(original.get(column)) for column in columns)]
        )
    return out.getvalue()


def is_correction(columns: list[str]) -> bool:
    return ID_COLUMN in columns


def corrected_chunks(
    columns: list[str],
    rows: list[list[str | None]],
    letters: dict[str, dict[str, Any]],
) -> tuple[list[RawChunk], list[str]]:
    """Raw chunks that put corrected rows in the place of the rows they correct.

    `letters` are the quarantine rows by id. Returns the chunks and the ids that
    match no quarantined row (they are left out: nothing to correct).
    """
    position = columns.index(ID_COLUMN)
    fields = [column for column in columns if column != ID_COLUMN]
    by_source: dict[tuple[str, str, str], list[tuple[int, list[str | None]]]] = {}
    unknown = []
    for row in rows:
        letter = letters.get(row[position] or "")
        if letter is None:
            unknown.append(row[position] or "")
            continue
        values = [_unsafe(value) if value is not None else None for value in row]
        del values[position]
        source = (letter["source_kind"], letter["source_id"], letter["source"])
        by_source.setdefault(source, []).append((int(letter["line"]), values))
    now = time.time()
    chunks = [
        RawChunk(
            source=SourceRef(kind, source_id, name),
            seq=0,
            columns=fields,
            rows=[values for _, values in entries],
            lines=[line for line, _ in entries],
            seen_at=now,
            release_status=str(QuarantineStatus.RESOLVED),
        )
        for (kind, source_id, name), entries in by_source.items()
    ]
    return chunks, unknown

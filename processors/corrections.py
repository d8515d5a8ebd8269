"""Correcting quarantined rows by hand: an export to CSV, and its drop-back.

The export carries each row's quarantine id and its fields as received, made
safe for spreadsheets (a cell that would start a formula gets a leading `'`).

A file whose first column is `quarantine_id` is such an export coming back:
each row is matched by its id and goes through the replay path under the
source and line it always had, so a row valid now becomes that sale (once,
whatever happens to messages) and its quarantine entry turns `resolved`; a row
still bad is quarantined again with its new reasons. Ids that name no
quarantined row are reported, never ingested; rows already resolved or
discarded are left alone, so a second drop changes nothing.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from processors.replay import plan_replay, publish_plan, wait_until_handled
from producers.publisher import KafkaPublisher
from producers.readers import RowChunk
from sinks.database import QueryRunner
from sinks.quarantine import letters_with_ids
from tillstream.records import QuarantineStatus, ReasonCode

__all__ = [
    "ID_COLUMN",
    "UNKNOWN_ID",
    "CorrectionIntake",
    "CorrectionOutcome",
    "corrected_original",
    "export_csv",
    "from_spreadsheet",
    "is_export",
    "spreadsheet_safe",
]

log = logging.getLogger(__name__)

ID_COLUMN = "quarantine_id"
UNKNOWN_ID = "unknown_quarantine_id"
"""The reason a drop-back row is not taken, in the file's ingestion history."""
_SHOWN_UNKNOWN = 5
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: str | None) -> str:
    """Text a spreadsheet shows as text: formula-looking cells get a leading `'`."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


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


def from_spreadsheet(value: str | None) -> str | None:
    """The inverse of `spreadsheet_safe`: the value as it was before export."""
    if value and value.startswith("'") and value[1:].startswith(_FORMULA_STARTS):
        return value[1:]
    return value


def is_export(columns: list[str]) -> bool:
    """Whether a file's header is that of an export (a spreadsheet may add a BOM or case)."""
    return bool(columns) and columns[0].lstrip("\ufeff").strip().lower() == ID_COLUMN


def corrected_original(
    letter: dict[str, Any], columns: list[str], row: list[str | None]
) -> dict[str, Any]:
    """The row as received, with the fields the export file carries in its place.

    A field dropped from the file keeps its received value; a column the row never had
    is not added. A row that could not be split into fields is taken whole from the file.
    """
    edited = {
        name: from_spreadsheet(value) for name, value in zip(columns[1:], row[1:], strict=True)
    }
    original = json.loads(letter["original"])
    if not isinstance(original, dict):
        return edited
    return {name: edited.get(name, value) for name, value in original.items()}


@dataclass
class CorrectionOutcome:
    """What a drop-back did, in the terms of the ingestion history."""

    rows: int = 0
    resolved: int = 0
    """Valid now: in `sales` (or `duplicates`) and `resolved` in the quarantine."""
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    rejected: int = 0
    """Still quarantined, unknown ids and rows that could not be split into fields."""
    unchanged: int = 0
    """Rows whose id is no longer quarantined (resolved or discarded before), or repeated."""
    unknown: list[tuple[int, str]] = field(default_factory=list)
    """(line, id) of rows whose id names no quarantined row."""

    def reject(self, reasons: Iterable[str], rows: int = 1) -> None:
        if not rows:
            return
        self.rejected += rows
        for reason in reasons:
            self.rejected_by_reason[reason] += rows

    def note(self) -> str:
        """One line about the unknown ids, for the history's error column; empty if none."""
        if not self.unknown:
            return ""
        shown = ", ".join(f"line {n} ({i!r})" for n, i in self.unknown[:_SHOWN_UNKNOWN])
        more = len(self.unknown) - _SHOWN_UNKNOWN
        return f"not ingested, no quarantined row has the id ({len(self.unknown)}): {shown}" + (
            f" and {more} more" if more > 0 else ""
        )


class CorrectionIntake:
    """Resolves quarantined rows from a corrected export dropped into the inbox."""

    def __init__(
        self,
        run: QueryRunner,
        database: str,
        publisher: KafkaPublisher,
        raw_topic: str,
        chunk_rows: int,
    ) -> None:
        self._run = run
        self._database = database
        self._publisher = publisher
        self._raw_topic = raw_topic
        self._chunk_rows = chunk_rows

    async def resolve(
        self, chunks: AsyncIterator[RowChunk], resolution: dict[str, str]
    ) -> CorrectionOutcome:
        """Send every correction, then wait until the pipeline has handled each one."""
        started = datetime.now(UTC)
        outcome = CorrectionOutcome()
        sent: dict[str, tuple[str, int]] = {}
        async for chunk in chunks:
            outcome.rows += len(chunk.rows) + len(chunk.unparseable)
            outcome.reject([ReasonCode.UNPARSEABLE_ROW], len(chunk.unparseable))
            ids = [(row[0] or "").strip() for row in chunk.rows]
            letters = {
                letter["id"]: letter
                for letter in await letters_with_ids(self._run, self._database, sorted(set(ids)))
            }
            corrected: dict[str, dict[str, Any]] = {}
            for letter_id, line, row in zip(ids, chunk.lines, chunk.rows, strict=True):
                letter = letters.get(letter_id)
                if letter is None:
                    outcome.unknown.append((line, letter_id))
                elif (
                    letter["status"] != QuarantineStatus.QUARANTINED
                    or letter_id in sent
                    or letter_id in corrected
                ):
                    outcome.unchanged += 1
                else:
                    original = corrected_original(letter, chunk.columns, row)
                    corrected[letter_id] = {**letter, "original": json.dumps(original)}
            plan = plan_replay(
                corrected.values(), self._chunk_rows, QuarantineStatus.RESOLVED, resolution
            )
            sent.update(await publish_plan(plan, self._publisher, self._raw_topic))
        await wait_until_handled(self._run, self._database, sent, started, math.inf)
        for letter in await letters_with_ids(self._run, self._database, list(sent)):
            if letter["status"] == QuarantineStatus.RESOLVED:
                outcome.resolved += 1
            else:
                outcome.reject(letter["reasons"])
        if outcome.unknown:
            outcome.reject([UNKNOWN_ID], len(outcome.unknown))
            log.warning("corrections: %s", outcome.note())
        return outcome

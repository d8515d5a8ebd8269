"""Correcting quarantined rows by hand starts with an export to CSV.

The export carries each row's quarantine id and its fields as received, made
safe for spreadsheets (a cell that would start a formula gets a leading `'`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from typing import Any

__all__ = ["ID_COLUMN", "export_csv", "spreadsheet_safe"]

ID_COLUMN = "quarantine_id"
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

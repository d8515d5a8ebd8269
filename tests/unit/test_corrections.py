from __future__ import annotations

import csv
import io
import json

import pytest

from processors.corrections import export_csv, spreadsheet_safe


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0"),
        ("+1+1", "'+1+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(1)", "'@SUM(1)"),
        ("Desk Lamp", "Desk Lamp"),
        ("", ""),
        (None, ""),
    ],
)
def test_cells_that_would_start_a_formula_are_exported_as_text(
    value: str | None, shown: str
) -> None:
    assert spreadsheet_safe(value) == shown


def test_export_has_ids_first_and_the_union_of_columns_and_skips_unsplit_rows() -> None:
    letters = [
        {"id": "a1", "original": json.dumps({"ID": "A-1", "Qty": "two"})},
        {"id": "b2", "original": json.dumps({"ID": "=1+1", "Price": "$x"})},
        {"id": "c3", "original": json.dumps("A-3,oops,too,many")},
    ]
    rows = list(csv.reader(io.StringIO(export_csv(letters))))
    assert rows == [
        ["quarantine_id", "ID", "Qty", "Price"],
        ["a1", "A-1", "two", ""],
        ["b2", "'=1+1", "", "$x"],
    ]

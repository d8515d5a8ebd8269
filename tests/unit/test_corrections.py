from __future__ import annotations

import csv
import io
import json

import pytest

from processors.corrections import (
    CorrectionOutcome,
    corrected_original,
    export_csv,
    from_spreadsheet,
    is_export,
    spreadsheet_safe,
)


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


@pytest.mark.parametrize("value", ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(1)", "'quoted", ""])
def test_a_spreadsheet_safe_cell_reads_back_as_it_was(value: str) -> None:
    assert from_spreadsheet(spreadsheet_safe(value)) == value


@pytest.mark.parametrize(
    ("columns", "export"),
    [
        (["quarantine_id", "ID"], True),
        (["\ufeffQuarantine_ID ", "ID"], True),
        (["ID", "quarantine_id"], False),
        ([], False),
    ],
)
def test_an_export_is_known_by_its_first_column(columns: list[str], export: bool) -> None:
    assert is_export(columns) is export


def test_a_correction_replaces_the_fields_the_file_carries_and_adds_none() -> None:
    letter = {"original": json.dumps({"ID": "A-1", "Qty": "two", "Note": "=x"})}
    columns = ["quarantine_id", "ID", "Qty", "Price"]
    assert corrected_original(letter, columns, ["a1", "A-1", "2", "$3"]) == {
        "ID": "A-1",
        "Qty": "2",
        "Note": "=x",
    }
    unsplit = {"original": json.dumps("A-3,oops")}
    assert corrected_original(unsplit, columns, ["c3", "A-3", "1", "'=1"]) == {
        "ID": "A-3",
        "Qty": "1",
        "Price": "=1",
    }


def test_unknown_ids_are_named_in_one_line() -> None:
    outcome = CorrectionOutcome(unknown=[(n, f"id{n}") for n in range(2, 9)])
    assert outcome.note() == (
        "not ingested, no quarantined row has the id (7): line 2 ('id2'), line 3 ('id3'), "
        "line 4 ('id4'), line 5 ('id5'), line 6 ('id6') and 2 more"
    )
    assert CorrectionOutcome().note() == ""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.chunks import _json_strings, _unique_columns, clean_chunk, decode_validated
from producers.publisher import partition_for
from tillstream.records import CLEAN_FIELDS, RawChunk, SourceRef, dead_letter_id
from tillstream.settings import default_rules

RULES = default_rules()
NOW = datetime(2025, 3, 14, 9, 30, 1, 250_000, tzinfo=UTC)
SOURCE = SourceRef("file", "ab" * 32, "inbox/sales.csv")
COLUMNS = ["OrderID", "Date", "Product", "Qty", "Price", "discount_percent", "Email"]


def chunk(
    rows: list[list[str | None]], unparseable: list[tuple[int, str]] | None = None
) -> RawChunk:
    return RawChunk(
        source=SOURCE,
        seq=0,
        columns=COLUMNS,
        rows=rows,
        lines=list(range(2, 2 + len(rows))),
        unparseable=unparseable or [],
        seen_at=NOW.timestamp(),
    )


def clean_values(rows: list[list[str | None]]) -> list[dict[str, object]]:
    cleaned = clean_chunk(chunk(rows), RULES, 4, NOW)
    return [
        json.loads(value)
        for message in cleaned.validated
        for value in decode_validated(message.value).clean_values
    ]


def test_a_clean_sale_carries_the_documented_fields_in_order_with_exact_values() -> None:
    [sale] = clean_values(
        [["A-1", "2025/03/13", "smartfone x", "2", "$1,200.00", "15%", "Ann@Example.com"]]
    )
    assert list(sale) == ["schema_version", *CLEAN_FIELDS[:-1]]
    assert sale["order_id"] == "A-1"
    assert sale["sold_at"] == "2025-03-13T00:00:00.000Z"
    assert sale["product"] == "Smartphone X"
    assert (sale["quantity"], sale["unit_price"], sale["discount"]) == (2, "1200.00", "0.150000")
    assert sale["revenue"] == "2040.00"
    assert sale["customer_email"] == "ann@example.com"
    assert (sale["source_id"], sale["line"]) == (SOURCE.id, 2)
    assert sale["ingested_at"] == "2025-03-14T09:30:01.250Z"
    assert sale["seen_at"] == "2025-03-14T09:30:01.250Z"


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=30).filter(lambda text: text.strip() != ""))
def test_any_text_survives_the_message_encoding_exactly(text: str) -> None:
    [sale] = clean_values([[text, "2025-01-02", "Desk Lamp", "1", "3.50", "0", "x@y.io"]])
    assert sale["order_id"] == text.strip()


def test_validated_rows_go_to_the_partition_of_their_order_id() -> None:
    rows: list[list[str | None]] = [
        [f"P-{n}", "2025-01-02", "Desk Lamp", "1", "3.50", "0", ""] for n in range(40)
    ]
    cleaned = clean_chunk(chunk(rows), RULES, 4, NOW)
    assert cleaned.valid_rows == 40
    for message in cleaned.validated:
        validated = decode_validated(message.value)
        order_ids = validated.order_ids
        assert {partition_for(order_id.encode(), 4) for order_id in order_ids} == {
            message.partition
        }
        originals = [json.loads(original)["OrderID"] for original in validated.originals]
        assert originals == order_ids


def test_rejected_and_unparseable_rows_become_dead_letters_with_the_row_as_received() -> None:
    rows: list[list[str | None]] = [
        ["B-1", "2025/13/45", "Desk Lamp", "two", "3.50", "0", ""],
        ["B-2", "2025-01-02", "Desk Lamp", "1", "3.50", "0", ""],
    ]
    cleaned = clean_chunk(chunk(rows, unparseable=[(9, "B-9,oops")]), RULES, 4, NOW)
    letters = {json.loads(m.value)["line"]: json.loads(m.value) for m in cleaned.dead_letters}
    assert letters[2]["reasons"] == ["invalid_date", "invalid_quantity"]
    assert letters[2]["original"] == dict(zip(COLUMNS, rows[0], strict=True))
    assert letters[2]["id"] == dead_letter_id(SOURCE.id, 2)
    assert letters[9]["reasons"] == ["unparseable_row"] and letters[9]["original"] == "B-9,oops"
    assert cleaned.rejects_by_reason == {
        "invalid_date": 1,
        "invalid_quantity": 1,
        "unparseable_row": 1,
    }
    assert cleaned.valid_rows == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(max_size=12)), max_size=20))
def test_column_wise_json_strings_equal_the_json_modules(values: list[str | None]) -> None:
    literals = _json_strings(pd.Series(values, dtype=object))
    assert literals.to_pylist() == [json.dumps(value, ensure_ascii=False) for value in values]


@pytest.mark.parametrize(
    ("header", "unique"),
    [
        (["a", "a", "a"], ["a", "a.1", "a.2"]),
        (["a", "a", "a.1"], ["a", "a.2", "a.1"]),
        (["a.1", "a", "a"], ["a.1", "a", "a.2"]),
        (["a", "a.1", "a", "a.1"], ["a", "a.1", "a.2", "a.1.1"]),
    ],
)
def test_repeated_header_names_become_names_no_header_has(
    header: list[str], unique: list[str]
) -> None:
    assert _unique_columns(header) == unique

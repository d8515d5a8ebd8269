"""The cleaning stage's output always fits a broker at its defaults, and loses no row."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import cast

import pandas as pd
import pytest
from aiokafka.errors import TopicAuthorizationFailedError

from processors.aggregates import facts_from_clean, sale_facts
from processors.chunks import clean_chunk, decode_validated
from processors.oversize import (
    MAX_MESSAGE_BYTES,
    MAX_ORIGINAL_CHARS,
    publish_cleaned,
    shrink_dead_letter,
)
from producers.publisher import KafkaPublisher, Message
from tillstream.records import RawChunk, SourceRef
from tillstream.settings import default_rules

NOW = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)
SOURCE = SourceRef("file", "c" * 64, "inbox/wide.csv")


class TopicRecorder:
    def __init__(self) -> None:
        self.sent: dict[str, list[Message]] = {}

    async def publish(
        self,
        topic: str,
        messages: list[Message],
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> int:
        self.sent.setdefault(topic, []).extend(messages)
        return len(messages)


def test_validated_messages_are_halved_until_they_fit_and_a_sale_too_large_is_quarantined() -> None:
    rows = [[f"L-{n}", "2025-03-01", "Lamp " + "x" * 4000, "1", "$10"] for n in range(300)]
    rows.append(["HUGE", "2025-03-01", "Lamp " + "y" * 600_000, "1", "$10"])
    chunk = RawChunk(
        SOURCE, 0, ["OrderID", "Date", "Product", "Qty", "Price"], rows, list(range(2, 303))
    )
    cleaned = clean_chunk(chunk, default_rules(), 1, NOW)
    assert max(len(m.value or b"") for m in cleaned.validated) > MAX_MESSAGE_BYTES
    recorder = TopicRecorder()

    asyncio.run(
        publish_cleaned(cast(KafkaPublisher, recorder), "dlq", "validated", cleaned, (), NOW)
    )
    validated = recorder.sent["validated"]
    assert all(len(m.key) + len(m.value or b"") <= MAX_MESSAGE_BYTES for m in validated)
    assert {m.partition for m in validated} == {0}
    halves = [decode_validated(m.value or b"") for m in validated]
    assert [line for half in halves for line in half.lines] == list(range(2, 302))
    for half in halves:  # each half carries the facts of its own sales
        pd.testing.assert_frame_equal(
            sale_facts(half, list(range(len(half.lines)))), facts_from_clean(half.clean_values)
        )
    [letter] = [json.loads(m.value or b"") for m in recorder.sent["dlq"]]
    assert (letter["line"], letter["reasons"]) == (302, ["message_too_large"])
    assert len(letter["original"]) == MAX_ORIGINAL_CHARS


def test_a_dead_letter_too_large_keeps_its_reasons_and_the_start_of_its_row() -> None:
    letter = {"id": "x", "reasons": ["invalid_price"], "messages": {"unit_price": "bad"}}
    big = Message(b"x", json.dumps({**letter, "original": {"Price": "z" * 2**20}}).encode())
    [small] = shrink_dead_letter(big)
    shrunk = json.loads(small.value or b"")
    assert shrunk["reasons"] == ["invalid_price"]
    assert shrunk["original"] == '{"Price":"' + "z" * (MAX_ORIGINAL_CHARS - 10)
    assert shrunk["messages"]["original"].startswith(f"cut to {MAX_ORIGINAL_CHARS} of ")
    fits = Message(b"y", json.dumps({**letter, "original": {"Price": "z"}}).encode())
    assert shrink_dead_letter(fits) == [fits]


class Refusing(TopicRecorder):
    async def publish(
        self,
        topic: str,
        messages: list[Message],
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> int:
        raise TopicAuthorizationFailedError()


def test_another_refusal_skips_the_chunk_in_one_line_rather_than_stop_the_agent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    chunk = RawChunk(SOURCE, 0, ["OrderID", "Qty"], [["A-1", "two"]], [2])
    cleaned = clean_chunk(chunk, default_rules(), 1, NOW)
    asyncio.run(publish_cleaned(cast(KafkaPublisher, Refusing()), "dlq", "v", cleaned, (), NOW))
    [record] = caplog.records
    assert "TopicAuthorizationFailedError" in record.getMessage()
    assert "\n" not in record.getMessage()

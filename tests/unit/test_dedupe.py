from __future__ import annotations

import json
from datetime import UTC, datetime

from processors.chunks import decode_validated, validated_value
from processors.dedupe import Classified, accept, classify
from processors.seen import SeenEntries
from producers.publisher import partition_for
from tillstream.records import CLEAN_FIELDS, SourceRef

NOW = datetime(2025, 3, 14, 10, 0, tzinfo=UTC)
FILE_A = SourceRef("file", "a" * 64, "inbox/a.csv")
FILE_B = SourceRef("file", "b" * 64, "inbox/b.csv")
F, F1, F2, F9 = (f"{n:016x}" for n in (0xF, 0xF1, 0xF2, 0xF9))
"""Fingerprints: 16 hex digits, as the clean stage makes them."""


def sale(order_id: str, fingerprint: str, line: int, clean: object = None) -> str:
    """A sale's line in a `sales.validated` message."""
    clean = clean or {"order_id": order_id, "line": line}
    original = {"ID": order_id, "Qty": "1"}
    return "\t".join(
        [json.dumps(order_id), fingerprint, str(line), json.dumps(clean), json.dumps(original)]
    )


def dedupe(
    source: SourceRef,
    sales: list[str],
    seen: SeenEntries,
    now: datetime,
    late_mask: int = 0,
) -> Classified:
    """Classify, then accept the new sales as the agent does (with one late mask)."""
    message = decode_validated(validated_value(source, None, sales))
    output = classify(message, seen.get_many(message.order_ids), now)
    accepted, _ = accept(message, output.new, [late_mask] * len(output.new), seen, now)
    output.clean.extend(accepted)
    return output


def test_first_delivery_of_an_order_is_clean_and_remembered(seen: SeenEntries) -> None:
    output = dedupe(FILE_A, [sale("o1", F1, 2), sale("o2", F2, 3)], seen, NOW)
    assert [m.key for m in output.clean] == [b"o1", b"o2"]
    assert output.duplicates == [] and output.dead_letters == []
    assert list(seen["o1"]) == [F1, FILE_A.id, 2, 0, int(NOW.timestamp())]


def test_same_content_from_another_place_is_a_duplicate_pointing_at_the_first(
    seen: SeenEntries,
) -> None:
    dedupe(FILE_A, [sale("o1", F1, 2)], seen, NOW)
    output = dedupe(FILE_B, [sale("o1", F1, 7)], seen, NOW)
    assert output.clean == [] and output.dead_letters == []
    [duplicate] = output.duplicates
    value = json.loads(duplicate.value)
    assert value["source_id"] == FILE_B.id and value["line"] == 7
    assert value["duplicate_of_source_id"] == FILE_A.id and value["duplicate_of_line"] == 2


def test_same_order_id_with_other_content_is_quarantined_as_conflict(seen: SeenEntries) -> None:
    dedupe(FILE_A, [sale("o1", F1, 2)], seen, NOW)
    output = dedupe(FILE_A, [sale("o1", F9, 40)], seen, NOW)
    assert output.clean == [] and output.duplicates == []
    [letter] = output.dead_letters
    value = json.loads(letter.value)
    assert value["reasons"] == ["conflicting_duplicate"]
    assert value["original"] == {"ID": "o1", "Qty": "1"}
    assert value["conflict_with"] == {"source_id": FILE_A.id, "line": 2}
    assert value["line"] == 40
    assert list(seen["o1"][:3]) == [F1, FILE_A.id, 2], "the first delivery keeps the order"


def test_the_same_row_read_again_after_a_crash_is_passed_on_again(seen: SeenEntries) -> None:
    dedupe(FILE_A, [sale("o1", F1, 2)], seen, NOW)
    output = dedupe(FILE_A, [sale("o1", F1, 2)], seen, NOW)
    assert [m.key for m in output.clean] == [b"o1"]
    assert output.duplicates == [] and output.dead_letters == []


def test_duplicates_within_one_batch_are_seen(seen: SeenEntries) -> None:
    output = dedupe(FILE_A, [sale("o1", F1, 2), sale("o1", F1, 3), sale("o1", F2, 4)], seen, NOW)
    assert len(output.clean) == 1
    assert len(output.duplicates) == 1
    assert len(output.dead_letters) == 1


def test_a_clean_message_is_the_cleaned_row_plus_the_windows_it_was_late_for(
    seen: SeenEntries,
) -> None:
    row = dict.fromkeys(CLEAN_FIELDS[:-1], "x")
    late = sale("o1", F1, 2, clean=row)
    [message] = dedupe(FILE_A, [late], seen, NOW, late_mask=0b0011).clean
    assert list(json.loads(message.value)) == list(CLEAN_FIELDS)
    assert json.loads(message.value)["late_windows"] == ["minute", "hour"]
    [again] = dedupe(FILE_A, [late], seen, NOW).clean
    assert json.loads(again.value)["late_windows"] == ["minute", "hour"], (
        "a redelivery keeps the lateness judged the first time"
    )


def test_orders_past_retention_are_forgotten_only_in_their_own_partition(seen: SeenEntries) -> None:
    orders = [f"o{n}" for n in range(40)]
    dedupe(FILE_A, [sale(order, F, n) for n, order in enumerate(orders)], seen, NOW)
    partition = partition_for(b"o0", 4)
    mine = {order for order in orders if partition_for(order.encode(), 4) == partition}
    assert seen.expire(int(NOW.timestamp()), {partition}, 4) == [], "not older than the cut"
    assert set(seen.expire(int(NOW.timestamp()) + 1, {partition}, 4)) == mine
    assert set(seen) == set(orders) - mine
    assert [m.key for m in dedupe(FILE_B, [sale("o0", F, 9)], seen, NOW).clean] == [b"o0"], (
        "a forgotten order is accepted again"
    )

from __future__ import annotations

import json
from datetime import UTC, datetime

from processors.chunks import ValidatedSale
from processors.dedupe import SeenEntry, dedupe
from tillstream.records import SourceRef

NOW = datetime(2025, 3, 14, 10, 0, tzinfo=UTC)
FILE_A = SourceRef("file", "a" * 64, "inbox/a.csv")
FILE_B = SourceRef("file", "b" * 64, "inbox/b.csv")


def sale(order_id: str, fingerprint: str, line: int) -> ValidatedSale:
    return ValidatedSale(
        order_id=order_id,
        fingerprint=fingerprint,
        line=line,
        clean_json=json.dumps({"order_id": order_id, "line": line}),
        original_json=json.dumps({"ID": order_id, "Qty": "1"}),
    )


def test_first_delivery_of_an_order_is_clean_and_remembered() -> None:
    seen: dict[str, SeenEntry] = {}
    output = dedupe(FILE_A, [sale("o1", "f1", 2), sale("o2", "f2", 3)], seen, NOW)
    assert [m.key for m in output.clean] == [b"o1", b"o2"]
    assert output.duplicates == [] and output.dead_letters == []
    assert seen["o1"] == ["f1", FILE_A.id, 2]


def test_same_content_from_another_place_is_a_duplicate_pointing_at_the_first() -> None:
    seen: dict[str, SeenEntry] = {}
    dedupe(FILE_A, [sale("o1", "f1", 2)], seen, NOW)
    output = dedupe(FILE_B, [sale("o1", "f1", 7)], seen, NOW)
    assert output.clean == [] and output.dead_letters == []
    [duplicate] = output.duplicates
    value = json.loads(duplicate.value)
    assert value["source_id"] == FILE_B.id and value["line"] == 7
    assert value["duplicate_of_source_id"] == FILE_A.id and value["duplicate_of_line"] == 2


def test_same_order_id_with_other_content_is_quarantined_as_conflict() -> None:
    seen: dict[str, SeenEntry] = {}
    dedupe(FILE_A, [sale("o1", "f1", 2)], seen, NOW)
    output = dedupe(FILE_A, [sale("o1", "f9", 40)], seen, NOW)
    assert output.clean == [] and output.duplicates == []
    [letter] = output.dead_letters
    value = json.loads(letter.value)
    assert value["reasons"] == ["conflicting_duplicate"]
    assert value["original"] == {"ID": "o1", "Qty": "1"}
    assert value["conflict_with"] == {"source_id": FILE_A.id, "line": 2}
    assert value["line"] == 40
    assert seen["o1"] == ["f1", FILE_A.id, 2], "the first delivery keeps the order"


def test_the_same_row_read_again_after_a_crash_is_passed_on_again() -> None:
    seen: dict[str, SeenEntry] = {}
    dedupe(FILE_A, [sale("o1", "f1", 2)], seen, NOW)
    output = dedupe(FILE_A, [sale("o1", "f1", 2)], seen, NOW)
    assert [m.key for m in output.clean] == [b"o1"]
    assert output.duplicates == [] and output.dead_letters == []


def test_duplicates_within_one_batch_are_seen() -> None:
    seen: dict[str, SeenEntry] = {}
    output = dedupe(
        FILE_A, [sale("o1", "f1", 2), sale("o1", "f1", 3), sale("o1", "f2", 4)], seen, NOW
    )
    assert len(output.clean) == 1
    assert len(output.duplicates) == 1
    assert len(output.dead_letters) == 1

"""Dedupe: the first delivery of an order wins, later ones are sorted out.

`seen` maps an order id to what was first accepted for it: the content
fingerprint, the provenance, the windows the sale was late for, and when it was
first seen. Redelivery of that very row (a source read again after a crash) is
passed on again, since downstream writes replace by key; the same sale from
another place is a duplicate; the same order id with other content is a conflict
and is quarantined.

`classify` sorts a batch; the agent judges the new sales against its watermark
(processors/aggregates.py) and `accept` then remembers them and emits them.
"""

from __future__ import annotations

import functools
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from datetime import datetime

from processors.aggregates import mask_windows
from processors.chunks import ValidatedSale, dead_letter, isoformat
from producers.publisher import Message, partitions_for
from tillstream.records import SCHEMA_VERSION, ReasonCode, SourceRef, decode, encode

__all__ = ["Classified", "SeenEntry", "accept", "classify", "expire"]

SeenEntry = list[str | int]
"""[fingerprint, source id, line, late-window mask, first seen (epoch seconds)]."""


@dataclass
class Classified:
    new: list[ValidatedSale] = field(default_factory=list)
    """First deliveries: not yet in `seen`, to be judged and then accepted."""
    clean: list[Message] = field(default_factory=list)
    """Redeliveries of an accepted row, passed on again as they were accepted."""
    dead_letters: list[Message] = field(default_factory=list)
    duplicates: list[Message] = field(default_factory=list)


def classify(
    source: SourceRef,
    sales: list[ValidatedSale],
    seen: MutableMapping[str, SeenEntry],
    now: datetime,
) -> Classified:
    output = Classified()
    first_here: dict[str, ValidatedSale] = {}
    for sale in sales:
        accepted = seen.get(sale.order_id)
        if accepted is None:
            earlier = first_here.get(sale.order_id)
            if earlier is None:
                first_here[sale.order_id] = sale
                output.new.append(sale)
                continue
            accepted = [earlier.fingerprint, source.id, earlier.line, 0, 0]
        fingerprint, first_source, first_line, late_mask, _ = accepted
        if first_source == source.id and first_line == sale.line:
            output.clean.append(clean_message(sale, int(late_mask)))
        elif fingerprint == sale.fingerprint:
            output.duplicates.append(
                _duplicate(source, sale, str(first_source), int(first_line), now)
            )
        else:
            output.dead_letters.append(_conflict(source, sale, str(first_source), first_line, now))
    return output


def accept(
    source: SourceRef,
    new: list[ValidatedSale],
    late_masks: list[int],
    seen: MutableMapping[str, SeenEntry],
    now: datetime,
) -> tuple[list[Message], list[tuple[str, SeenEntry]]]:
    """Remember first deliveries with the windows they were late for; their
    `sales.clean` messages, and the entries added (what the changelog must record)."""
    first_seen = int(now.timestamp())
    messages = []
    entries: list[tuple[str, SeenEntry]] = []
    for sale, mask in zip(new, late_masks, strict=True):
        entry: SeenEntry = [sale.fingerprint, source.id, sale.line, int(mask), first_seen]
        seen[sale.order_id] = entry
        entries.append((sale.order_id, entry))
        messages.append(clean_message(sale, int(mask)))
    return messages, entries


def expire(
    seen: MutableMapping[str, SeenEntry], partition: int, partitions: int, before: int
) -> list[str]:
    """Forget this partition's orders first seen before `before` (epoch seconds):
    the dedupe retention window. Returns the order ids forgotten."""
    old = [order_id for order_id, entry in seen.items() if int(entry[4]) < before]
    owners = partitions_for([order_id.encode() for order_id in old], partitions)
    expired = [order_id for order_id, owner in zip(old, owners, strict=True) if owner == partition]
    for order_id in expired:
        del seen[order_id]
    return expired


def clean_message(sale: ValidatedSale, late_mask: int) -> Message:
    """The `sales.clean` message: the cleaned row plus the windows it was late for."""
    value = f'{sale.clean_json[:-1]},"late_windows":{_late_windows_json(late_mask)}}}'
    return Message(sale.order_id.encode(), value.encode())


@functools.cache
def _late_windows_json(mask: int) -> str:
    """A few masks for millions of rows: each one's JSON is made once."""
    return encode(mask_windows(mask)).decode()


def _conflict(
    source: SourceRef, sale: ValidatedSale, first_source: str, first_line: str | int, now: datetime
) -> Message:
    return dead_letter(
        source,
        sale.line,
        sale.original_json,
        [ReasonCode.CONFLICTING_DUPLICATE],
        {
            "order_id": f"order {sale.order_id!r} was first received with other "
            f"content (source {first_source[:12]}, line {first_line})"
        },
        now,
        extra={
            "conflict_with": {"source_id": first_source, "line": first_line},
            "cleaned": decode(sale.clean_json.encode()),
        },
    )


def _duplicate(
    source: SourceRef, sale: ValidatedSale, first_source: str, first_line: int, now: datetime
) -> Message:
    value = {
        "schema_version": SCHEMA_VERSION,
        "order_id": sale.order_id,
        "source": source.name,
        "source_kind": source.kind,
        "source_id": source.id,
        "line": sale.line,
        "duplicate_of_source_id": first_source,
        "duplicate_of_line": first_line,
        "detected_at": isoformat(now),
    }
    return Message(sale.order_id.encode(), encode(value))

"""Dedupe: the first delivery of an order wins, later ones are sorted out.

`seen` maps an order id to what was first accepted for it (processors/seen.py):
the content fingerprint, the provenance, the windows the sale was late for, and
when it was first seen. Redelivery of that very row (a source read again after a
crash) is passed on again, since downstream writes replace by key; the same sale
from another place is a duplicate; the same order id with other content is a
conflict and is quarantined.

`classify` sorts a batch; the agent judges the new sales against its watermark
(processors/aggregates.py) and `accept` then remembers them and emits them.
"""

from __future__ import annotations

import functools
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import repeat

from processors.aggregates import mask_windows
from processors.chunks import ValidatedMessage, dead_letter, isoformat
from processors.seen import SeenEntry
from producers.publisher import Message
from tillstream.records import SCHEMA_VERSION, ReasonCode, decode, encode

__all__ = ["Classified", "accept", "classify", "clean_message"]


@dataclass
class Classified:
    new: list[int] = field(default_factory=list)
    """Positions in the message of first deliveries: not yet in `seen`, to be judged
    and then accepted."""
    clean: list[Message] = field(default_factory=list)
    """Redeliveries of an accepted row, passed on again as they were accepted."""
    dead_letters: list[Message] = field(default_factory=list)
    duplicates: list[Message] = field(default_factory=list)


def classify(
    message: ValidatedMessage, accepted_before: Sequence[SeenEntry | None], now: datetime
) -> Classified:
    """Sort a message's sales by what `seen` holds for each of them, in order (None:
    not there)."""
    output = Classified()
    source = message.source
    first_here: dict[str, int] = {}
    for position, (order_id, accepted) in enumerate(
        zip(message.order_ids, accepted_before, strict=True)
    ):
        if accepted is None:
            earlier = first_here.setdefault(order_id, position)
            if earlier == position:
                output.new.append(position)
                continue
            accepted = (message.fingerprints[earlier], source.id, message.lines[earlier], 0, 0)
        fingerprint, first_source, first_line, late_mask, _ = accepted
        if first_source == source.id and first_line == message.lines[position]:
            output.clean.append(
                clean_message(order_id, message.clean_values[position], int(late_mask))
            )
        elif fingerprint == message.fingerprints[position]:
            output.duplicates.append(
                _duplicate(message, position, str(first_source), int(first_line), now)
            )
        else:
            output.dead_letters.append(
                _conflict(message, position, str(first_source), first_line, now)
            )
    return output


def accept(
    message: ValidatedMessage,
    new: list[int],
    late_masks: list[int],
    seen: MutableMapping[str, SeenEntry],
    now: datetime,
) -> tuple[list[Message], list[tuple[str, SeenEntry]]]:
    """Remember first deliveries with the windows they were late for; their
    `sales.clean` messages, and the entries added (what the changelog must record)."""
    order_ids = [message.order_ids[position] for position in new]
    entries: list[tuple[str, SeenEntry]] = list(
        zip(
            order_ids,
            zip(
                [message.fingerprints[position] for position in new],
                repeat(message.source.id),
                [message.lines[position] for position in new],
                late_masks,
                repeat(int(now.timestamp())),
                strict=False,  # the repeats are endless
            ),
            strict=True,
        )
    )
    seen.update(entries)
    messages = [
        clean_message(order_id, message.clean_values[position], mask)
        for order_id, position, mask in zip(order_ids, new, late_masks, strict=True)
    ]
    return messages, entries


def clean_message(order_id: str, clean_value: bytes, late_mask: int) -> Message:
    """The `sales.clean` message: the cleaned row plus the windows it was late for."""
    return Message(order_id.encode(), clean_value[:-1] + _late_windows_field(late_mask))


@functools.cache
def _late_windows_field(mask: int) -> bytes:
    """A few masks for millions of rows: each one's JSON is made once."""
    return b',"late_windows":' + encode(mask_windows(mask)) + b"}"


def _conflict(
    message: ValidatedMessage,
    position: int,
    first_source: str,
    first_line: str | int,
    now: datetime,
) -> Message:
    order_id = message.order_ids[position]
    return dead_letter(
        message.source,
        message.lines[position],
        message.originals[position].decode(),
        [ReasonCode.CONFLICTING_DUPLICATE],
        {
            "order_id": f"order {order_id!r} was first received with other "
            f"content (source {first_source[:12]}, line {first_line})"
        },
        now,
        extra={
            "conflict_with": {"source_id": first_source, "line": first_line},
            "cleaned": decode(message.clean_values[position]),
        },
    )


def _duplicate(
    message: ValidatedMessage, position: int, first_source: str, first_line: int, now: datetime
) -> Message:
    source, order_id = message.source, message.order_ids[position]
    value = {
        "schema_version": SCHEMA_VERSION,
        "order_id": order_id,
        "source": source.name,
        "source_kind": source.kind,
        "source_id": source.id,
        "line": message.lines[position],
        "duplicate_of_source_id": first_source,
        "duplicate_of_line": first_line,
        "detected_at": isoformat(now),
    }
    return Message(order_id.encode(), encode(value))

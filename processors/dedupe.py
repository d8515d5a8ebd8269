"""Dedupe: the first delivery of an order wins, later ones are sorted out.

`seen` maps an order id to what was first accepted for it: the content
fingerprint and the provenance. Redelivery of that very row (a source read
again after a crash) is passed on again, since downstream writes replace by
key; the same sale from another place is a duplicate; the same order id with
other content is a conflict and is quarantined.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field
from datetime import datetime

from processors.chunks import ValidatedSale, dead_letter, isoformat
from producers.publisher import Message
from tillstream.records import SCHEMA_VERSION, ReasonCode, SourceRef, decode, encode

__all__ = ["DedupeOutput", "dedupe"]

SeenEntry = list[str | int]
"""[fingerprint, source id, line] of the accepted delivery."""


@dataclass
class DedupeOutput:
    clean: list[Message] = field(default_factory=list)
    dead_letters: list[Message] = field(default_factory=list)
    duplicates: list[Message] = field(default_factory=list)
    accepted: list[tuple[str, SeenEntry]] = field(default_factory=list)
    """The entries added to `seen`, in order: what its changelog must record."""


def dedupe(
    source: SourceRef,
    sales: list[ValidatedSale],
    seen: MutableMapping[str, SeenEntry],
    now: datetime,
) -> DedupeOutput:
    output = DedupeOutput()
    for sale in sales:
        accepted = seen.get(sale.order_id)
        if accepted is None:
            entry: SeenEntry = [sale.fingerprint, source.id, sale.line]
            seen[sale.order_id] = entry
            output.accepted.append((sale.order_id, entry))
            output.clean.append(Message(sale.order_id.encode(), sale.clean_json.encode()))
            continue
        fingerprint, first_source, first_line = accepted
        if first_source == source.id and first_line == sale.line:
            output.clean.append(Message(sale.order_id.encode(), sale.clean_json.encode()))
        elif fingerprint == sale.fingerprint:
            output.duplicates.append(
                _duplicate(source, sale, str(first_source), int(first_line), now)
            )
        else:
            output.dead_letters.append(
                dead_letter(
                    source,
                    sale.line,
                    sale.original_json,
                    [ReasonCode.CONFLICTING_DUPLICATE],
                    {
                        "order_id": f"order {sale.order_id!r} was first received with other "
                        f"content (source {str(first_source)[:12]}, line {first_line})"
                    },
                    now,
                    extra={
                        "conflict_with": {"source_id": first_source, "line": first_line},
                        "cleaned": decode(sale.clean_json.encode()),
                    },
                )
            )
    return output


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

"""What ingesting a file would do, without writing anything anywhere.

The file goes through the same reader, the same `clean_chunk` and the same
dedupe as in the pipeline; the orders accepted before come from ClickHouse
(read-only), so duplicates and conflicts with earlier files are reported too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from processors.chunks import clean_chunk, decode_validated
from processors.dedupe import accept, classify
from processors.seen import SeenEntry
from producers.publisher import Message
from producers.readers import read_chunks, sha256_of
from tillstream.records import RawChunk, SourceRef, decode
from tillstream.settings import Settings

__all__ = ["DryRunReport", "OrderLookup", "dry_run"]

OrderLookup = Callable[[list[str]], Awaitable[dict[str, SeenEntry]]]
"""The accepted delivery of each order id already known downstream."""


@dataclass
class DryRunReport:
    file: str
    rows: int = 0
    valid: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    """Rows per reason code (a row with two reasons counts for both)."""
    rejected_rows: int = 0


async def dry_run(
    path: Path,
    settings: Settings,
    known_orders: OrderLookup,
    rows_read: Callable[[int], None] = lambda rows: None,
) -> DryRunReport:
    """Raises UnreadableFileError as ingestion would fail the file. `rows_read` hears how
    many rows are done after each chunk: a big file takes a while."""
    source = SourceRef("file", sha256_of(path), str(path))
    report = DryRunReport(file=str(path))
    seen: dict[str, SeenEntry] = {}
    now = datetime.now(UTC)
    partitions = settings.kafka.partitions
    watch = settings.watch
    chunks = read_chunks(
        path,
        watch.chunk_rows,
        max_decompressed_bytes=watch.max_decompressed_bytes,
        max_inflation=watch.max_inflation,
    )
    for seq, chunk in enumerate(chunks):
        raw = RawChunk(source, seq, chunk.columns, chunk.rows, chunk.lines, chunk.unparseable)
        cleaned = clean_chunk(raw, settings.cleaning, partitions, now)
        report.rows += len(chunk.rows) + len(chunk.unparseable)
        _count_dead_letters(report, cleaned.dead_letters)
        for message in cleaned.validated:
            validated = decode_validated(message.value)
            unknown = [order_id for order_id in validated.order_ids if order_id not in seen]
            seen.update(await known_orders(unknown))
            accepted_before = [seen.get(order_id) for order_id in validated.order_ids]
            output = classify(validated, accepted_before, now)
            accept(validated, output.new, [0] * len(output.new), seen, now)
            report.valid += len(output.clean) + len(output.new)
            report.duplicates += len(output.duplicates)
            _count_dead_letters(report, output.dead_letters)
        rows_read(report.rows)
    return report


def _count_dead_letters(report: DryRunReport, letters: list[Message]) -> None:
    for letter in letters:
        report.rejected.update(decode(letter.value)["reasons"])
    report.rejected_rows += len(letters)

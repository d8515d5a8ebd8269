"""The single-process pandas reference: what a script does with the same cleaning code.

Issue 8 asks the pipeline to reach half of this. It reads the file in chunks
of 100 k rows (pandas.read_csv, or the product's reader), cleans each chunk with the product's
`clean_rows`, drops re-deliveries and quarantines conflicting ones (a dict of
order id -> fingerprint, as the product's dedupe keeps), and inserts clean rows,
rejects and duplicates into chDB with `insert_arrow`. No Kafka, no JSON.

chDB lets one process open one data directory, so `throughput.py` runs this
file as its own process; it prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import clickhouse_connect  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
from clickhouse_connect.driver.client import Client  # noqa: E402

from processors.cleaning import CLEAN_COLUMNS, clean_rows  # noqa: E402
from producers.readers import read_chunks  # noqa: E402
from tillstream.records import ReasonCode  # noqa: E402
from tillstream.settings import default_rules  # noqa: E402

__all__ = ["run_reference"]

FINGERPRINT = [name for name in CLEAN_COLUMNS if name != "revenue_cents"]
"""What makes two deliveries the same sale: every cleaned field; revenue follows from them."""

_TABLES = {
    "sales": """
        CREATE TABLE bench.sales (
            line UInt64, order_id String, sold_at DateTime64(6, 'UTC'),
            product LowCardinality(String), category LowCardinality(String),
            region LowCardinality(String), store_id LowCardinality(String),
            quantity Int64, unit_price_cents Int64, discount_ppm Int64, revenue_cents Int64,
            currency LowCardinality(String), customer_email String
        ) ENGINE = MergeTree ORDER BY order_id""",
    "quarantine": """
        CREATE TABLE bench.quarantine (
            line UInt64, reasons Array(LowCardinality(String)), messages Map(String, String)
        ) ENGINE = MergeTree ORDER BY line""",
    "duplicates": """
        CREATE TABLE bench.duplicates (line UInt64) ENGINE = MergeTree ORDER BY line""",
}
_MESSAGES = pa.map_(pa.string(), pa.string())


class _Clock:
    """Seconds spent per phase, to show where a script's time goes."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - started


def _dedupe(
    clean: pd.DataFrame, seen: dict[str, int]
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(accepted sales, lines of exact re-deliveries, lines of conflicting ones)."""
    ids = clean["order_id"].to_numpy(dtype=object)
    prints = pd.util.hash_pandas_object(clean[FINGERPRINT], index=False).to_numpy()
    first_here = ~clean["order_id"].duplicated().to_numpy()
    known = np.fromiter((order in seen for order in ids), dtype=bool, count=len(ids))
    new = first_here & ~known
    seen.update(zip(ids[new].tolist(), prints[new].tolist(), strict=True))
    again = np.flatnonzero(~new)
    accepted = np.fromiter((seen[order] for order in ids[again]), dtype=np.uint64)
    lines = clean.index.to_numpy()[again]
    same = accepted == prints[again]
    return clean[new], lines[same], lines[~same]


def _quarantine(rejected: pd.DataFrame, conflicts: np.ndarray, unparseable: list[int]) -> pa.Table:
    lines = [*rejected.index.tolist(), *conflicts.tolist(), *unparseable]
    reasons = [
        *([str(reason) for reason in row] for row in rejected["reasons"]),
        *([str(ReasonCode.CONFLICTING_DUPLICATE)] for _ in range(len(conflicts))),
        *([str(ReasonCode.UNPARSEABLE_ROW)] for _ in unparseable),
    ]
    messages = [
        *(list(row.items()) for row in rejected["messages"]),
        *([] for _ in range(len(conflicts) + len(unparseable))),
    ]
    return pa.table(
        {
            "line": pa.array(lines, pa.uint64()),
            "reasons": pa.array(reasons, pa.list_(pa.string())),
            "messages": pa.array(messages, _MESSAGES),
        }
    )


def _insert(client: Client, table: str, data: pa.Table) -> None:
    if data.num_rows:
        client.insert_arrow(f"bench.{table}", data)


def _outcome(client: Client) -> dict[str, Any]:
    valid, cents, units = client.query(
        "SELECT count(), sum(revenue_cents), sum(quantity) FROM bench.sales"
    ).result_rows[0]
    reasons = client.query(
        "SELECT reason, count() FROM bench.quarantine ARRAY JOIN reasons AS reason GROUP BY reason"
    ).result_rows
    return {
        "valid": int(valid),
        "revenue": f"{int(cents) // 100}.{int(cents) % 100:02d}",
        "units": int(units),
        "rejected": {str(reason): int(count) for reason, count in sorted(reasons)},
        "duplicates": int(client.command("SELECT count() FROM bench.duplicates")),
    }


_Frames = Iterator[tuple[pd.DataFrame, list[int]]]
"""Chunks as the frame `clean_rows` takes (index = line numbers) and unparseable lines."""


def _pandas_frames(path: Path, chunk_rows: int) -> _Frames:
    """`pandas.read_csv` in chunks, every value as text: the issue's reference reader.

    Line numbers assume one physical line per record, true of generated files.
    """
    reader = pd.read_csv(
        path, dtype=str, keep_default_na=False, na_filter=False, chunksize=chunk_rows
    )
    with reader:
        for frame in reader:
            frame.index = frame.index + 2
            yield frame, []


def _tillstream_frames(path: Path, chunk_rows: int) -> _Frames:
    """The product's own reader: encoding detection, line numbers, unparseable rows."""
    for chunk in read_chunks(path, chunk_rows):
        frame = pd.DataFrame(chunk.rows, columns=chunk.columns, index=chunk.lines, dtype=object)
        yield frame, [line for line, _ in chunk.unparseable]


READERS: dict[str, Callable[[Path, int], _Frames]] = {
    "pandas": _pandas_frames,
    "tillstream": _tillstream_frames,
}


def run_reference(path: Path, db_dir: Path, chunk_rows: int, reader: str) -> dict[str, Any]:
    """Clean `path` into a fresh chDB under `db_dir`; timings exclude opening chDB."""
    rules = default_rules()
    client = clickhouse_connect.get_client(dsn=f"chdb:///{db_dir}")
    client.command("CREATE DATABASE bench")
    for ddl in _TABLES.values():
        client.command(ddl)
    clock = _Clock()
    seen: dict[str, int] = {}
    rows = 0
    started = time.perf_counter()
    frames = READERS[reader](path, chunk_rows)
    while True:
        with clock.phase("read"):
            frame, unparseable = next(frames, (None, []))
            if frame is None:
                break
        rows += len(frame) + len(unparseable)
        with clock.phase("clean"):
            result = clean_rows(frame, rules)
        with clock.phase("dedupe"):
            sales, duplicates, conflicts = _dedupe(result.clean, seen)
        with clock.phase("insert"):
            table = pa.Table.from_pandas(sales.rename_axis("line").reset_index())
            _insert(client, "sales", table)
            _insert(client, "quarantine", _quarantine(result.rejected, conflicts, unparseable))
            _insert(client, "duplicates", pa.table({"line": pa.array(duplicates, pa.uint64())}))
    seconds = time.perf_counter() - started
    outcome = _outcome(client)
    client.close()
    return {"rows": rows, "seconds": seconds, "phases": clock.phases, "outcome": outcome}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="a sales CSV (see throughput.py to make one)")
    parser.add_argument("--chunk-rows", type=int, default=100_000, help="rows per chunk")
    parser.add_argument(
        "--reader",
        choices=sorted(READERS),
        default="pandas",
        help="pandas.read_csv in chunks (the issue's reference) or the product's read_chunks",
    )
    parser.add_argument("--db-dir", type=Path, help="chDB directory (default: a fresh temp dir)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tillstream-reference-") as scratch:
        db_dir = args.db_dir or Path(scratch) / "chdb"
        result = run_reference(args.file, db_dir, args.chunk_rows, args.reader)
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

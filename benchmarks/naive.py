"""The naive streaming baseline: one row per Kafka message, cleaned one event at a time.

This is the design that issue 8 measures tillstream against: every row of the
file is its own message on the embedded broker, a Faust agent takes one event
at a time, runs the product's `clean_rows` on a one-row DataFrame and sends the
result row with `topic.send`. It runs on a sample of the file (it is slow), and
its rate is what extrapolates. The time spent in the DataFrame and `clean_rows`
is reported apart from the rest (Faust, aiokafka, JSON).

Publishing the sample is not timed (it uses the batch API, far faster); the
clock runs from the agent's first event to the last result flushed. Runs as its
own process so Faust's and the broker's state never leak into another run; it
prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import faust  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks._common import progress  # noqa: E402
from processors.cleaning import clean_rows, map_columns  # noqa: E402
from producers.publisher import KafkaPublisher, Message  # noqa: E402
from producers.readers import read_chunks  # noqa: E402
from tillstream.broker import EmbeddedBroker  # noqa: E402
from tillstream.settings import KafkaConfig, default_rules  # noqa: E402
from tillstream.topics import Topics, ensure_topics  # noqa: E402

__all__ = ["run_naive"]

_PROGRESS_EVERY = 5_000


def _sample(path: Path, rows: int) -> tuple[list[str], list[Message]]:
    """The file's first `rows` rows, one message each, keyed by order id."""
    chunk = next(read_chunks(path, rows))
    header = map_columns(chunk.columns, default_rules()).get("order_id")
    order = chunk.columns.index(header) if header is not None else 0
    messages = [
        Message(key=(row[order] or "").encode(), value=json.dumps([line, row]).encode())
        for line, row in zip(chunk.lines, chunk.rows, strict=True)
    ]
    return chunk.columns, messages


async def _run(path: Path, rows: int, data_dir: Path) -> dict[str, Any]:
    broker = EmbeddedBroker(log_file=data_dir / "broker.log")
    await broker.start()
    try:
        return await _measure(path, rows, data_dir, broker.bootstrap_servers)
    finally:
        await broker.stop()


async def _measure(path: Path, rows: int, data_dir: Path, servers: str) -> dict[str, Any]:
    config = KafkaConfig(topic_prefix="naive.")
    topics = Topics.from_config(config)
    await ensure_topics(servers, config, topics.all())
    columns, messages = _sample(path, rows)
    publisher = KafkaPublisher(servers, "naive-bench")
    await publisher.start()
    try:
        published = time.perf_counter()
        for start in range(0, len(messages), 10_000):
            await publisher.publish(topics.raw.name, messages[start : start + 10_000])
        progress(
            f"naive: published {len(messages):,} one-row messages "
            f"in {time.perf_counter() - published:.1f}s"
        )
    finally:
        await publisher.stop()
    return await _consume(columns, len(messages), data_dir, servers, topics, config)


async def _consume(
    columns: list[str],
    expected: int,
    data_dir: Path,
    servers: str,
    topics: Topics,
    config: KafkaConfig,
) -> dict[str, Any]:
    rules = default_rules()
    app = faust.App(
        "naive-bench",
        broker=f"kafka://{servers}",
        store="memory://",
        datadir=str(data_dir / "faust"),
        topic_partitions=config.partitions,
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        broker_session_timeout=config.session_timeout_seconds,
        broker_heartbeat_interval=config.session_timeout_seconds / 3,
        broker_rebalance_timeout=config.session_timeout_seconds,
        web_enabled=False,
    )
    raw = app.topic(topics.raw.name, key_serializer="raw", value_serializer="raw")
    clean = app.topic(topics.clean.name, key_serializer="raw", value_serializer="raw")
    dlq = app.topic(topics.dlq.name, key_serializer="raw", value_serializer="raw")
    seen = {"events": 0, "clean": 0, "rejected": 0}
    marks: dict[str, float] = {}
    finished = asyncio.Event()

    @app.agent(raw, name="naive")
    async def naive(stream: faust.StreamT[bytes]) -> None:
        async for value in stream:
            marks.setdefault("first", time.perf_counter())
            line, row = json.loads(value)
            cleaning = time.perf_counter()
            frame = pd.DataFrame([row], columns=columns, index=[line], dtype=object)
            result = clean_rows(frame, rules)
            marks["cleaning"] = marks.get("cleaning", 0.0) + time.perf_counter() - cleaning
            for record in result.clean.to_dict("records"):
                out = json.dumps(record, default=str).encode()
                await clean.send(key=str(record["order_id"]).encode(), value=out)
                seen["clean"] += 1
            for reasons in result.rejected["reasons"]:
                out = json.dumps({"line": line, "row": row, "reasons": list(reasons)}).encode()
                await dlq.send(key=str(line).encode(), value=out)
                seen["rejected"] += 1
            seen["events"] += 1
            if seen["events"] % _PROGRESS_EVERY == 0:
                progress(f"naive: {seen['events']:,}/{expected:,} events")
            if seen["events"] == expected:
                finished.set()

    started = time.perf_counter()
    await app.start()
    try:
        await asyncio.wait_for(finished.wait(), timeout=max(120.0, expected / 100))
        await app.producer.flush()
        ended = time.perf_counter()
    finally:
        await app.stop()
    first = marks["first"]
    return {
        "rows": expected,
        "seconds": ended - first,
        "startup_seconds": first - started,
        "cleaning_seconds": marks["cleaning"],
        "clean": seen["clean"],
        "rejected": seen["rejected"],
    }


def run_naive(path: Path, rows: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tillstream-naive-") as scratch:
        return asyncio.run(_run(path, rows, Path(scratch)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="a sales CSV (see throughput.py to make one)")
    parser.add_argument("--rows", type=int, default=20_000, help="rows of the sample")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    json.dump(run_naive(args.file, args.rows), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

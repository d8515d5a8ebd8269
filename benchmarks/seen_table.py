"""Memory and speed of the dedupe table: RocksDB on disk against a dict in memory.

The `seen` table remembers every accepted order for the retention window, so what
it holds in memory is most of what a worker's memory grows by with the file. This
fills a plain dict of tuples (what Faust's memory store holds) and `SeenEntries`
(processors/seen.py, RocksDB) with the same orders, in chunk-sized batches as
`accept` adds them, each in a fresh process, and reports the RSS the table adds,
the time to remember an order and to look orders up a message at a time as dedupe
does, and the time of expiry's look for orders past retention (none are), side by
side in one run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._common import fmt_int, own_memory_mb, progress, report, start  # noqa: E402
from processors.seen import SeenEntries, SeenEntry  # noqa: E402

_CHUNK = 4_000
_MESSAGE = 1_000
"""Sales in one `sales.validated` message: a 4,000-row chunk over 4 partitions."""
_ORDERS_PER_SOURCE = 100_000
_PARTITIONS = 4
Batch = list[tuple[str, SeenEntry]]
DICT = "dict of tuples (memory)"
ROCKSDB = "SeenEntries (RocksDB)"


@dataclass(frozen=True)
class Measured:
    held_mb: float
    """RSS after filling the table, above the RSS before."""
    peak_mb: float
    """Peak RSS while filling it, above the RSS before (the lookups' own lists of order
    ids come after)."""
    disk_mb: float
    remember_s: float
    new_s: float
    known_s: float
    expiry_s: float


def batches(orders: int) -> Iterator[Batch]:
    """What `accept` adds for a file of `orders` new sales (the generator's order ids),
    made as it adds them: the table keeps the key and fingerprint objects alive."""
    first_seen = int(time.time())
    for start_at in range(0, orders, _CHUNK):
        numbers = range(start_at, min(start_at + _CHUNK, orders))
        source_id = f"{start_at // _ORDERS_PER_SOURCE:064x}"
        yield list(
            zip(
                order_ids(numbers),
                zip(
                    [f"{n * 0x9E3779B97F4A7C15 % 2**64:016x}" for n in numbers],
                    repeat(source_id),
                    [n + 2 for n in numbers],
                    repeat(0),
                    repeat(first_seen),
                    strict=False,  # the repeats are endless
                ),
                strict=True,
            )
        )


def order_ids(numbers: range) -> list[str]:
    return [f"ORD-{n:08d}" for n in numbers]


def measure(layout: str, orders: int, folder: str) -> Measured:
    """Run in a fresh process, so that its RSS is the table's."""
    before = own_memory_mb("VmRSS")
    began = time.perf_counter()
    entries: dict[str, SeenEntry] | SeenEntries = (
        {} if layout == DICT else SeenEntries(Path(folder) / "seen")
    )
    for batch in batches(orders):
        entries.update(batch)
    remember_s = time.perf_counter() - began
    held_mb, peak_mb = own_memory_mb("VmRSS") - before, own_memory_mb("VmHWM") - before
    messages = [range(at, min(at + _MESSAGE, orders)) for at in range(0, orders, _MESSAGE)]
    known = [order_ids(numbers) for numbers in messages]
    new = [[f"X{order_id}" for order_id in message] for message in known]
    looked_up = []
    for asked in (new, known):
        began = time.perf_counter()
        for message in asked:
            if isinstance(entries, SeenEntries):
                entries.get_many(message)
            else:
                list(map(entries.get, message))
        looked_up.append(time.perf_counter() - began)
    began = time.perf_counter()
    if isinstance(entries, SeenEntries):
        for partition in range(_PARTITIONS):
            entries.expire(0, {partition}, _PARTITIONS)
    else:
        for _ in range(_PARTITIONS):
            [order_id for order_id, entry in entries.items() if int(entry[4]) < 0]
    expiry_s = time.perf_counter() - began
    disk = sum(file.stat().st_size for file in Path(folder).rglob("*") if file.is_file())
    return Measured(held_mb, peak_mb, disk / 2**20, remember_s, *looked_up, expiry_s)


def in_fresh_process(layout: str, orders: int) -> Measured:
    spawn = multiprocessing.get_context("spawn")
    with (
        tempfile.TemporaryDirectory(prefix="tillstream-seen-") as folder,
        ProcessPoolExecutor(max_workers=1, mp_context=spawn) as process,
    ):
        return process.submit(measure, layout, orders, folder).result()


def main(argv: list[str] | None = None) -> int:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--orders", type=int, default=1_000_000, help="orders remembered")
    arguments.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    args = start(arguments, argv)
    figures: dict[str, Measured] = {}
    for layout in (DICT, ROCKSDB):
        progress(f"{layout}: remembering {args.orders:,} orders, looking up, expiring")
        figures[layout] = in_fresh_process(layout, args.orders)
    per_order = 1e6 / args.orders
    rows = [
        [
            layout,
            fmt_int(run.held_mb),
            fmt_int(run.peak_mb),
            fmt_int(run.disk_mb),
            f"{run.remember_s * per_order:.2f}",
            f"{run.new_s * per_order:.2f}",
            f"{run.known_s * per_order:.2f}",
            f"{run.expiry_s * 1000:.0f}",
        ]
        for layout, run in figures.items()
    ]
    memory, disk = figures[DICT], figures[ROCKSDB]
    report(
        f"Dedupe table, {args.orders:,} orders",
        [
            "table",
            "RSS held (MB)",
            "peak RSS filling (MB)",
            "disk (MB)",
            "remember (µs/order)",
            "look up, new (µs)",
            "look up, known (µs)",
            f"expiry, {_PARTITIONS} partitions (ms)",
        ],
        rows,
        [
            f"{args.orders:,} orders: on disk the table holds {disk.held_mb:,.0f} MB of RSS "
            f"against {memory.held_mb:,.0f} MB in a dict; remembering takes "
            f"{disk.remember_s / memory.remember_s:.1f}x the dict's time, looking up a new "
            f"order {disk.new_s / memory.new_s:.1f}x, a known one "
            f"{disk.known_s / memory.known_s:.1f}x; expiry's look "
            f"{disk.expiry_s * 1000:.0f} ms against {memory.expiry_s * 1000:.0f} ms for the "
            "dict's scan of every order",
        ],
        [
            f"each table in a fresh process; orders remembered in batches of {_CHUNK:,} "
            f"and looked up {_MESSAGE:,} at a time (a message); RSS from /proc/self/status"
        ],
        recorded=args.record,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Memory and speed of the dedupe table's entries: packed against a dict of tuples.

The `seen` table remembers every accepted order for the retention window, so its
bytes per order are most of what a worker's memory grows by. This fills a plain
dict (what the table held before processors/seen.py) and `SeenEntries` with the
same orders, in chunk-sized batches as `accept` adds them, and reports bytes per
order (tracemalloc), the time to remember an order and to look one up, and the time
of the scan expiry makes of every order every 10 minutes, side by side in one run;
and the bytes Faust's own store would add for an order restored from a changelog
(its key -> partition map), which `SeenStore` does without.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from itertools import repeat
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._common import fmt_int, progress, report, start  # noqa: E402
from processors.seen import SeenEntries, SeenEntry  # noqa: E402

_CHUNK = 4_000
_ORDERS_PER_SOURCE = 100_000
Batch = list[tuple[str, SeenEntry]]
Layout = Callable[[], MutableMapping[str, SeenEntry]]
LAYOUTS: dict[str, Layout] = {
    "dict of tuples": dict,
    "SeenEntries (packed)": SeenEntries,
}


def batches(orders: int) -> Iterator[Batch]:
    """What `accept` adds for a file of `orders` new sales (the generator's order ids),
    made as it adds them: the table keeps the key and fingerprint objects alive."""
    first_seen = int(time.time())
    for start_at in range(0, orders, _CHUNK):
        numbers = range(start_at, min(start_at + _CHUNK, orders))
        source_id = f"{start_at // _ORDERS_PER_SOURCE:064x}"
        yield list(
            zip(
                [f"ORD-{n:08d}" for n in numbers],
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


def fill(layout: Layout, all_batches: Iterable[Batch]) -> MutableMapping[str, SeenEntry]:
    entries = layout()
    for batch in all_batches:
        entries.update(batch)
    return entries


def bytes_per_order(layout: Layout, orders: int) -> float:
    gc.collect()
    tracemalloc.start()
    entries = fill(layout, batches(orders))
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del entries
    return held / orders


def partition_map_bytes(order_ids: list[str]) -> float:
    """What Faust's in-memory store adds for every key it restores from a changelog: the
    key's partition, in a dict of its own (`SeenStore` keeps none)."""
    gc.collect()
    tracemalloc.start()
    partition_of = dict.fromkeys(order_ids, 0)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del partition_of
    return held / len(order_ids)


def old_orders(entries: MutableMapping[str, SeenEntry], before: int) -> list[str]:
    """What expiry asks of the table: the orders first seen before `before`."""
    if isinstance(entries, SeenEntries):
        return entries.seen_before(before)
    return [order_id for order_id, entry in entries.items() if int(entry[4]) < before]


def timings(
    layout: Layout, all_batches: list[Batch], known: list[str], new: list[str]
) -> list[float]:
    """Seconds to remember every order, to look up orders not there and orders there,
    and to find the expired ones (none are)."""
    began = time.perf_counter()
    entries = fill(layout, all_batches)
    remembered = time.perf_counter()
    list(map(entries.get, new))
    looked_up_new = time.perf_counter()
    list(map(entries.get, known))
    looked_up_known = time.perf_counter()
    old_orders(entries, 0)
    return [
        remembered - began,
        looked_up_new - remembered,
        looked_up_known - looked_up_new,
        time.perf_counter() - looked_up_known,
    ]


def main(argv: list[str] | None = None) -> int:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--orders", type=int, default=1_000_000, help="orders remembered")
    arguments.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    args = start(arguments, argv)
    progress(f"making {args.orders:,} orders")
    all_batches = list(batches(args.orders))
    order_ids = [order_id for batch in all_batches for order_id, _ in batch]
    absent = [f"X{order_id}" for order_id in order_ids]
    figures: dict[str, list[float]] = {}
    for name, layout in LAYOUTS.items():
        progress(f"{name}: remembering, looking up")
        times = timings(layout, all_batches, order_ids, absent)
        progress(f"{name}: bytes")
        figures[name] = [bytes_per_order(layout, args.orders), *times]
    progress("Faust's key -> partition map: bytes")
    restored_extra = partition_map_bytes(order_ids)
    baseline = figures["dict of tuples"]
    rows = [
        [
            name,
            fmt_int(size),
            f"{remember / args.orders * 1e6:.2f}",
            f"{absent_s / args.orders * 1e6:.2f}",
            f"{present_s / args.orders * 1e6:.2f}",
            f"{scan_s / args.orders * 1e9:.0f}",
            f"{size / baseline[0]:.2f}x",
        ]
        for name, (size, remember, absent_s, present_s, scan_s) in figures.items()
    ]
    packed = figures["SeenEntries (packed)"]
    report(
        "Dedupe table entries",
        [
            "layout",
            "bytes per order",
            "remember (µs/order)",
            "look up, new (µs)",
            "look up, known (µs)",
            "expiry scan (ms per million orders)",
            "bytes vs dict",
        ],
        rows,
        [
            f"{args.orders:,} orders: packed {fmt_int(packed[0])} bytes an order against "
            f"{fmt_int(baseline[0])} ({packed[0] / baseline[0]:.2f}x); remembering "
            f"{packed[1] / baseline[1]:.1f}x the time, looking up a new order "
            f"{packed[2] / baseline[2]:.1f}x, a known one {packed[3] / baseline[3]:.1f}x; "
            f"expiry's scan {packed[4] / baseline[4]:.1f}x, {packed[4] / args.orders * 1e9:.0f} "
            "ms per million orders remembered, once per partition every 10 minutes on the "
            "worker's event loop",
            f"restored from a changelog, Faust's in-memory store also maps every key to its "
            f"partition: {fmt_int(restored_extra)} bytes an order more, which `SeenStore` "
            "does not keep",
        ],
        [
            "bytes: tracemalloc of the filled table (key, entry, the dict's share); times: "
            "one pass each, same process, same orders"
        ],
        recorded=args.record,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The sink's ClickHouse queries on the real engine: over sets of hundreds of thousands
of values, after retried inserts, and on a database from an earlier version.

Found on a 10,000,000-row file: the sink's reconciliation of late sales named the
windows to recompute, a 3,000,000-row file's sales alone fall in 311,855 minutes, and
chDB hangs on `IN {starts:Array(Int64)}` past about 140,000 values; the sink wrote
nothing for seven minutes, until stopped. The database runs in this process, as the
sink's does in `up`, on the real engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sinks.accepted_orders import find_accepted
from sinks.database import Database
from sinks.history import IngestionHistory, SourceStatus
from sinks.late_sales import LateSales
from sinks.schema import LATE_PARTITION, TABLES, late_sales_totals, migrate
from tillstream.records import SourceRef
from tillstream.settings import ClickHouseConfig

pytestmark = [
    pytest.mark.integration,
    pytest.mark.broker_independent,
    # A hang fails the run instead of waiting out CI: chDB's thread cannot be stopped.
    pytest.mark.timeout(300, method="thread"),
]

SALES = 200_000
"""Each late for its own minute window: well past where `IN` an array hung."""


def sale(number: int) -> bytes:
    cents = 100 + number % 7
    hours, minute = divmod(number, 60)
    days, hour = divmod(hours, 24)
    month, day = divmod(days, 28)
    return json.dumps(
        {
            "order_id": f"O-{number:07d}",
            "fingerprint": f"{number:016x}",
            "sold_at": f"2020-{1 + month:02d}-{1 + day:02d}T{hour:02d}:{minute:02d}:00.000Z",
            "product": "Lamp",
            "category": "home",
            "region": "North",
            "store_id": "S1",
            "quantity": 1,
            "unit_price": f"{cents / 100:.2f}",
            "discount": "0",
            "revenue": f"{cents / 100:.2f}",
            "currency": "EUR",
            "customer_email": "",
            "late_windows": ["minute"],
            "source": "file",
            "source_kind": "file",
            "source_id": "s",
            "line": number,
            "seen_at": "2020-01-01T00:00:00.000Z",
            "ingested_at": "2020-01-01T00:00:00.000Z",
        }
    ).encode()


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Database, list[bytes]]]:
    """One chDB for the module (an engine per process), holding SALES late sales."""
    path: Path = tmp_path_factory.mktemp("large-sets") / "clickhouse"
    database = Database(f"chdb://{path}", ClickHouseConfig())
    sales = [sale(number) for number in range(SALES)]

    async def prepare() -> None:
        await migrate(database)
        await database.insert_json_rows("sales", sales)

    asyncio.run(prepare())
    yield database, sales
    asyncio.run(database.close())


@contextlib.asynccontextmanager
async def another_database(beside: Database, name: str) -> AsyncIterator[Database]:
    """A database of its own on the module's engine, dropped afterwards."""
    db = Database(beside.url, ClickHouseConfig(database=name))
    try:
        yield db
    finally:
        await db.command(f"DROP DATABASE IF EXISTS {db.name}")
        await db.close()


async def forget_reconciliations(db: Database) -> None:
    """Back to a database no reconciliation has seen: the next one takes every window."""
    for table in ("aggregates", "late_orders", "late_reconciliations"):
        await db.command(f"TRUNCATE TABLE {db.name}.{table}")


async def late_totals(db: Database, window: str) -> list[tuple[str, int, str]]:
    """The reconciled totals of every `window` window: start, orders, revenue."""
    rows = await db.rows(
        f"SELECT toString(window_start), sum(orders), toString(sum(revenue)) "
        f"FROM {db.name}.aggregates FINAL WHERE window = {{window:String}} "
        "AND dimension = 'total' AND partition = {late:UInt16} "
        "GROUP BY window_start ORDER BY window_start",
        {"window": window, "late": LATE_PARTITION},
    )
    return [tuple(row) for row in rows]


async def written_rows(db: Database, window: str) -> int:
    """Rows written to the aggregates for `window` windows, versions included."""
    [(rows,)] = await db.rows(
        f"SELECT count() FROM {db.name}.aggregates WHERE window = {{window:String}}",
        {"window": window},
    )
    return int(rows)


_SUMMED = """
    SELECT window, window_start, dimension, key, sum(revenue), sum(units), sum(orders),
        sum(discount_sum)
    FROM ({}) GROUP BY window, window_start, dimension, key ORDER BY ALL"""


async def reconciled(db: Database) -> list[tuple[object, ...]]:
    """Every late total in the aggregates, as the report views add them up."""
    late = f"SELECT * FROM {db.name}.aggregates FINAL WHERE partition = {LATE_PARTITION}"
    return [tuple(row) for row in await db.rows(_SUMMED.format(late))]


def every_late_sale(db: Database) -> str:
    return f"SELECT * FROM {db.name}.sales FINAL WHERE notEmpty(late_windows)"


async def recomputed(db: Database) -> list[tuple[object, ...]]:
    """Every late total computed again from all of `sales`, each order once."""
    totals = late_sales_totals(every_late_sale(db))
    return [tuple(row) for row in await db.rows(_SUMMED.format(totals))]


async def assert_each_order_counted_once(db: Database, orders: int) -> None:
    """The late totals equal a recomputation from all of `sales`, and the minute
    windows hold `orders` orders in all."""
    assert await reconciled(db) == await recomputed(db)
    assert sum(count for _, count, _ in await late_totals(db, "minute")) == orders


def again(row: bytes) -> bytes:
    """The same sale written again, as a file read again after a crash writes it: the
    later ingestion, which a merge of `sales` keeps."""
    return json.dumps({**json.loads(row), "ingested_at": "2020-01-02T00:00:00.000Z"}).encode()


async def test_late_sales_of_hundreds_of_thousands_of_windows_are_reconciled(
    database: tuple[Database, list[bytes]],
) -> None:
    db, _ = database
    await forget_reconciliations(db)
    late = LateSales()

    await late.reconcile(db)  # the first takes every window

    totals = await late_totals(db, "minute")
    expected_cents = sum(100 + number % 7 for number in range(SALES))
    assert len(totals) == SALES
    assert sum(orders for _, orders, _ in totals) == SALES
    assert sum(round(float(revenue) * 100) for _, _, revenue in totals) == expected_cents
    assert totals[61] == ("2020-01-01 01:01:00.000", 1, f"{(100 + 61 % 7) / 100:.2f}")


async def test_hundreds_of_thousands_of_accepted_orders_are_found(
    database: tuple[Database, list[bytes]],
) -> None:
    db, _ = database
    wanted = [f"O-{number:07d}" for number in range(SALES)] + ["O-missing"]

    found = await find_accepted(db.records, db.name, wanted)

    assert len(found) == SALES
    assert found["O-0001234"][:3] == [f"{1234:016x}", "s", 1234]


async def test_windows_written_while_a_reconciliation_runs_are_reconciled_by_the_next(
    database: tuple[Database, list[bytes]],
) -> None:
    """The reconciliation runs on a client of its own, beside the sink's writes: what
    is written while one runs is reconciled by the next, if not by that one."""
    db, _ = database
    await forget_reconciliations(db)
    sink = Database(db.url, ClickHouseConfig())  # the sink's own client, as in `up`
    late = LateSales()
    try:
        running = asyncio.create_task(late.reconcile(db))  # every window: takes a while
        await asyncio.sleep(0.5)  # it has sent its query
        sold = {**json.loads(sale(SALES)), "order_id": "O-meanwhile", "late_windows": ["month"]}
        await sink.insert_json_rows("sales", [json.dumps(sold).encode()])
        assert not running.done(), "the reconciliation ended before the write: nothing tested"
        await running
        minute_rows = await written_rows(db, "minute")

        await late.reconcile(db)
    finally:
        await sink.close()

    assert await late_totals(db, "month") == [
        (f"{sold['sold_at'][:7]}-01 00:00:00.000", 1, sold["revenue"])
    ]
    assert await written_rows(db, "minute") == minute_rows, "windows not written to were redone"


async def test_a_sale_written_again_is_counted_once_before_and_after_a_merge(
    database: tuple[Database, list[bytes]],
) -> None:
    """Orders written again within one reconciliation's rows, after being counted, and
    after being counted and then merged into the later copy (whose block is new)."""
    async with another_database(database[0], "written_again") as db:
        sales = [sale(number) for number in range(12)]
        await migrate(db)
        late = LateSales()
        await db.insert_json_rows("sales", sales[:6])
        await db.insert_json_rows("sales", [again(row) for row in sales[:2]])
        await late.reconcile(db)
        await db.insert_json_rows("sales", [again(row) for row in sales[2:4]] + sales[6:9])
        await late.reconcile(db)
        await db.insert_json_rows("sales", [again(row) for row in sales[4:6]] + sales[9:])
        await db.command(f"OPTIMIZE TABLE {db.name}.sales FINAL")

        await late.reconcile(db)

        await assert_each_order_counted_once(db, len(sales))


async def test_a_reconciliation_cut_short_is_redone_whole_after_a_restart(
    database: tuple[Database, list[bytes]],
) -> None:
    """`up` killed after a reconciliation wrote its totals and before it recorded the
    block it reached: the next `up` takes those orders again, with what came since."""
    async with another_database(database[0], "cut_short") as db:
        await migrate(db)
        late = LateSales()
        await db.insert_json_rows("sales", [sale(number) for number in range(4)])
        await late.reconcile(db)
        await db.insert_json_rows("sales", [sale(number) for number in range(4, 8)])
        await late.reconcile(db)
        await db.command(
            f"ALTER TABLE {db.name}.late_reconciliations DELETE WHERE upto = "
            f"(SELECT max(upto) FROM {db.name}.late_reconciliations) "
            "SETTINGS mutations_sync = 1"
        )
        await db.insert_json_rows("sales", [sale(number) for number in range(8, 12)])

        await LateSales().reconcile(db)

        await assert_each_order_counted_once(db, 12)


async def test_late_totals_from_before_reconciliations_were_told_apart_are_replaced(
    database: tuple[Database, list[bytes]],
) -> None:
    """An `aggregates` whose late rows were each window's whole total: migrated, the
    first reconciliation counts every late sale again and replaces them."""
    async with another_database(database[0], "before_reconciliations") as db:
        created = (
            TABLES["aggregates"]
            .format(db=db.name)
            .replace("reconciliation UInt64,", "")
            .replace(", partition, reconciliation)", ", partition)")
        )
        await db.command(f"CREATE DATABASE {db.name}")
        await db.command(created)
        await db.command(TABLES["sales"].format(db=db.name))
        await db.insert_json_rows("sales", [sale(number) for number in range(6)])
        await db.command(
            f"INSERT INTO {db.name}.aggregates (window, window_start, dimension, key, "
            "partition, revenue, units, orders, discount_sum, version) "
            f"SELECT window, window_start, dimension, key, {LATE_PARTITION}, revenue, "
            f"units, orders, discount_sum, 1 FROM ({late_sales_totals(every_late_sale(db))})"
        )
        await migrate(db)
        await db.insert_json_rows("sales", [sale(number) for number in range(6, 9)])

        await LateSales().reconcile(db)

        await assert_each_order_counted_once(db, 9)


async def test_a_sales_table_from_before_block_numbers_is_reconciled_after_migrating(
    database: tuple[Database, list[bytes]],
) -> None:
    """A `sales` created before its rows kept their insert blocks' numbers: left so,
    rows merged after the migration would all report their merged part's first block
    number, and a reconciliation would find nothing new."""
    month = {"late_windows": ["month"], "ingested_at": "2020-01-01T00:00:00.000Z"}
    async with another_database(database[0], "before_block_numbers") as db:
        created = TABLES["sales"].format(db=db.name).replace(", enable_block_number_column = 1", "")

        async def sold(number: int) -> None:
            row = {
                **json.loads(sale(number)),
                **month,
                "sold_at": f"2020-{number:02d}-01T00:00:00Z",
            }
            await db.insert_json_rows("sales", [json.dumps(row).encode()])
            await db.command(f"OPTIMIZE TABLE {db.name}.sales FINAL")

        await db.command(f"CREATE DATABASE {db.name}")
        await db.command(created)
        await sold(1)
        await migrate(db)
        late = LateSales()
        await late.reconcile(db)
        await sold(2)
        await sold(3)

        await late.reconcile(db)

        assert [start[:7] for start, _, _ in await late_totals(db, "month")] == [
            "2020-01",
            "2020-02",
            "2020-03",
        ]


async def test_a_file_in_flight_when_the_line_bitmaps_came_in_finishes_after_migrating(
    database: tuple[Database, list[bytes]],
) -> None:
    """A database from before `source_lines`: the rows a file already had in the
    tables are counted from the tables when the views are created, and the rows
    after by the views; a row written twice counts once."""
    source = SourceRef("file", "f" * 64, "inbox/in-flight.csv")
    provenance = {"source": source.name, "source_kind": "file", "source_id": source.id}
    async with another_database(database[0], "before_source_lines") as db:

        async def written(table: str, *rows: dict[str, object]) -> None:
            await db.insert_json_rows(
                table, [json.dumps({**provenance, **row}).encode() for row in rows]
            )

        await db.command(f"CREATE DATABASE {db.name}")
        for name in ("sales", "quarantine", "duplicates", "ingestion_history"):
            await db.command(TABLES[name].format(db=db.name))
        history = IngestionHistory(db)
        entry = await history.start(source, datetime.now(UTC))
        await written("sales", {"order_id": "A", "line": 2}, {"order_id": "B", "line": 3})
        await written("quarantine", {"id": "q4", "line": 4, "reasons": ["invalid_price"]})
        await migrate(db)
        await written("sales", {"order_id": "B", "line": 3}, {"order_id": "C", "line": 5})
        await written("duplicates", {"order_id": "A", "line": 6})
        await history.finish_reading(entry, rows_read=5)

        [done] = await history.reconcile()

        assert (done.status, done.valid, done.rejected, done.duplicates) == (
            SourceStatus.DONE,
            3,
            1,
            1,
        )
        assert done.rejected_by_reason == {"invalid_price": 1}


def test_a_retried_insert_lands_even_where_a_failed_attempt_left_its_token(
    database: tuple[Database, list[bytes]],
) -> None:
    """ClickHouse can keep a failed insert's deduplication token without its rows (seen
    when a table's storage failed mid-insert); here the rows are deleted after landing,
    which leaves the token the same way. Sent again as the same attempt they are dropped
    as a duplicate; as the sink's retry, they land."""
    db, _ = database
    rows = [json.dumps({"id": f"r{number}"}).encode() for number in range(100)]

    async def lines() -> int:
        [(count,)] = await db.rows(f"SELECT count() FROM {db.name}.retried")
        return int(count)

    async def run() -> list[int]:
        await db.command(
            f"CREATE TABLE {db.name}.retried (id String) ENGINE = ReplacingMergeTree "
            "ORDER BY id SETTINGS non_replicated_deduplication_window = 100"
        )
        await db.insert_json_rows("retried", rows)
        await db.command(
            f"ALTER TABLE {db.name}.retried DELETE WHERE 1 SETTINGS mutations_sync = 1"
        )
        seen = [await lines()]
        await db.insert_json_rows("retried", rows)
        seen.append(await lines())
        await db.insert_json_rows("retried", rows, attempt=1)
        seen.append(await lines())
        return seen

    assert asyncio.run(run()) == [0, 0, len(rows)]

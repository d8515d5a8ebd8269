"""The ClickHouse schema, created idempotently at start-up.

Every table that the sink writes from Kafka is a ReplacingMergeTree on the row's
natural key, and accepts insert dedup tokens: a re-delivered batch is dropped
by its token, a re-processed row (after a crash) replaces itself by its key.
Counting queries count distinct keys (`uniqExact`, or `groupBitmap` for line
numbers) or use `FINAL`, so they are right before merges happen. The ingestion
history's counts of lines are kept as they are written, by materialized views
(`SOURCE_LINES`); the late sales' reconciliation keeps its own record of what it
counted (`late_orders`, `late_reconciliations`: sinks/late_sales.py).
"""

from __future__ import annotations

from sinks.database import Database

__all__ = [
    "LATE_PARTITION",
    "SOURCE_LINES",
    "TABLES",
    "VIEWS",
    "late_sale_windows",
    "late_sales_totals",
    "migrate",
]

_DEDUP = "non_replicated_deduplication_window = 10000"
_PROVENANCE = (
    "source LowCardinality(String), source_kind LowCardinality(String), "
    "source_id String, line UInt64"
)
"""Where a row came from: every table of rows carries it, for per-source accounting."""
_AGGREGATES_KEY = "(window, dimension, key, window_start, partition, reconciliation)"
"""The identity of an `aggregates` row; `migrate` gives an older table the same."""
_BLOCK_NUMBERS = "enable_block_number_column = 1"
"""`sales` keeps each row's insert block number through merges: by it, the late sales'
reconciliation finds the rows written since its last run."""

TABLES: dict[str, str] = {
    "sales": f"""
        CREATE TABLE IF NOT EXISTS {{db}}.sales (
            order_id String,
            fingerprint String,
            sold_at DateTime64(3, 'UTC'),
            product LowCardinality(String),
            category LowCardinality(String),
            region LowCardinality(String),
            store_id LowCardinality(String),
            quantity UInt32,
            unit_price Decimal(18, 2),
            discount Decimal(9, 6),
            revenue Decimal(18, 2),
            currency LowCardinality(String),
            customer_email String,
            late_windows Array(LowCardinality(String)),
            {_PROVENANCE},
            seen_at DateTime64(3, 'UTC'),
            ingested_at DateTime64(3, 'UTC'),
            written_at DateTime64(3, 'UTC') DEFAULT now64(3)
        ) ENGINE = ReplacingMergeTree(ingested_at)
        ORDER BY order_id
        SETTINGS {_DEDUP}, {_BLOCK_NUMBERS}""",
    "quarantine": f"""
        CREATE TABLE IF NOT EXISTS {{db}}.quarantine (
            id String,
            reasons Array(LowCardinality(String)),
            messages Map(String, String),
            original String,
            {_PROVENANCE},
            status LowCardinality(String),
            resolution Map(String, String),
            first_seen DateTime64(3, 'UTC'),
            last_seen DateTime64(3, 'UTC'),
            written_at DateTime64(3, 'UTC') DEFAULT now64(3)
        ) ENGINE = ReplacingMergeTree(last_seen)
        ORDER BY id
        SETTINGS {_DEDUP}""",
    "duplicates": f"""
        CREATE TABLE IF NOT EXISTS {{db}}.duplicates (
            order_id String,
            {_PROVENANCE},
            duplicate_of_source_id String,
            duplicate_of_line UInt64,
            detected_at DateTime64(3, 'UTC'),
            written_at DateTime64(3, 'UTC') DEFAULT now64(3)
        ) ENGINE = ReplacingMergeTree(detected_at)
        ORDER BY (source_id, line)
        SETTINGS {_DEDUP}""",
    "aggregates": f"""
        CREATE TABLE IF NOT EXISTS {{db}}.aggregates (
            window LowCardinality(String),
            window_start DateTime64(3, 'UTC'),
            dimension LowCardinality(String),
            key String,
            partition UInt16,
            reconciliation UInt64,
            revenue Decimal(18, 2),
            units UInt64,
            orders UInt64,
            discount_sum Decimal(18, 6),
            version UInt64,
            written_at DateTime64(3, 'UTC') DEFAULT now64(3)
        ) ENGINE = ReplacingMergeTree(version)
        ORDER BY {_AGGREGATES_KEY}
        SETTINGS {_DEDUP}""",
    "anomalies": f"""
        CREATE TABLE IF NOT EXISTS {{db}}.anomalies (
            order_id String,
            product LowCardinality(String),
            sold_at DateTime64(3, 'UTC'),
            revenue Decimal(18, 2),
            score Nullable(Float64),
            baseline_median Decimal(18, 2),
            baseline_mad Decimal(18, 2),
            baseline_size UInt32,
            source String,
            source_id String,
            detected_at DateTime64(3, 'UTC'),
            written_at DateTime64(3, 'UTC') DEFAULT now64(3)
        ) ENGINE = ReplacingMergeTree(detected_at)
        ORDER BY order_id
        SETTINGS {_DEDUP}""",
    "ingestion_history": """
        CREATE TABLE IF NOT EXISTS {db}.ingestion_history (
            source_id String,
            source_kind LowCardinality(String),
            source_name String,
            status LowCardinality(String),
            rows_read Nullable(UInt64),
            valid UInt64,
            rejected UInt64,
            rejected_by_reason Map(String, UInt64),
            duplicates UInt64,
            error String,
            seen_at DateTime64(3, 'UTC'),
            started_at DateTime64(3, 'UTC'),
            finished_at Nullable(DateTime64(3, 'UTC')),
            version UInt64
        ) ENGINE = ReplacingMergeTree(version)
        ORDER BY source_id""",
    "source_lines": """
        CREATE TABLE IF NOT EXISTS {db}.source_lines (
            source_id String,
            outcome LowCardinality(String),
            reason LowCardinality(String),
            lines AggregateFunction(groupBitmap, UInt64)
        ) ENGINE = AggregatingMergeTree
        ORDER BY (source_id, outcome, reason)""",
    "late_orders": """
        CREATE TABLE IF NOT EXISTS {db}.late_orders (
            order_id String,
            reconciliation UInt64
        ) ENGINE = ReplacingMergeTree
        ORDER BY order_id""",
    "late_reconciliations": """
        CREATE TABLE IF NOT EXISTS {db}.late_reconciliations (
            upto UInt64,
            finished_at DateTime64(3, 'UTC') DEFAULT now64(3)
        ) ENGINE = MergeTree
        ORDER BY upto""",
}

SOURCE_LINES: dict[str, str] = {
    "sales_lines": """
        SELECT source_id, 'valid' AS outcome, '' AS reason, groupBitmapState(line) AS lines
        FROM {db}.sales GROUP BY source_id""",
    "quarantine_lines": """
        SELECT source_id, 'rejected' AS outcome, reason, groupBitmapState(line) AS lines
        FROM {db}.quarantine ARRAY JOIN arrayConcat([''], reasons) AS reason
        GROUP BY source_id, reason""",
    "duplicates_lines": """
        SELECT source_id, 'duplicate' AS outcome, '' AS reason, groupBitmapState(line) AS lines
        FROM {db}.duplicates GROUP BY source_id""",
}
"""The lines of every source in `sales`, `quarantine` (in all and per reason) and
`duplicates`, kept in `source_lines` as bitmaps by materialized views, for the
ingestion history: a redelivered row adds a line already there, so the counts are
of distinct lines, and counting a source reads its bitmaps instead of scanning the
tables (on a 1M-row file the scans took 3.7 s of the sink's time, more as tables grow)."""


LATE_PARTITION = 65535
"""The `aggregates.partition` of the totals the sink reconciles from late sales; their
`reconciliation` tells the reconciliations apart (the workers' rows have 0)."""


def late_sale_windows(sales: str) -> str:
    """Each late sale of the rows selected by the query `sales` once for every window
    it was late for, with the window's start: the rows the late-sales totals group."""
    return f"""
        SELECT window,
            toDateTime64(multiIf(
                window = 'minute', toStartOfMinute(sold_at),
                window = 'hour', toStartOfHour(sold_at),
                window = 'day', toDateTime64(toStartOfDay(sold_at), 3, 'UTC'),
                toDateTime64(toStartOfMonth(sold_at), 3, 'UTC')), 3, 'UTC') AS window_start,
            product, region, category, store_id, revenue, quantity, discount
        FROM ({sales}) ARRAY JOIN late_windows AS window"""


def late_sales_totals(sales: str) -> str:
    """Totals per window and dimension value of the `sales` rows (a query, one row an
    order) that were late for that window, in the columns of `aggregates`: what the
    workers could not fold.

    One grouping set per dimension, over the same rows: fanning every late sale out
    into a row per dimension first, and grouping those once, took twice the time on a
    backfill (benchmarks/late_sales.py). `grouping(column) = 0` marks the set grouped by
    that column: the SQL standard's meaning, set here for servers whose default differs."""
    return f"""
        SELECT window, window_start,
            multiIf(grouping(product) = 0, 'product', grouping(region) = 0, 'region',
                grouping(category) = 0, 'category', grouping(store_id) = 0, 'store',
                'total') AS dimension,
            multiIf(grouping(product) = 0, product, grouping(region) = 0, region,
                grouping(category) = 0, category, grouping(store_id) = 0, store_id,
                '') AS key,
            sum(revenue) AS revenue, sum(quantity) AS units, count() AS orders,
            sum(discount) AS discount_sum
        FROM ({late_sale_windows(sales)})
        GROUP BY GROUPING SETS ((window, window_start), (window, window_start, product),
            (window, window_start, region), (window, window_start, category),
            (window, window_start, store_id))
        SETTINGS force_grouping_standard_compatibility = 1"""


VIEWS: dict[str, str] = {
    "sales_aggregates": """
        SELECT window, window_start, dimension, key,
            sum(revenue) AS revenue, sum(units) AS units, sum(order_count) AS orders,
            sum(discount_total) / sum(order_count) AS average_discount
        FROM (
            SELECT window, window_start, dimension, key, revenue, units,
                orders AS order_count, discount_sum AS discount_total
            FROM {db}.aggregates FINAL
        )
        GROUP BY window, window_start, dimension, key""",
    "monthly_sales_summary": """
        SELECT window_start AS month, revenue, units, orders, average_discount
        FROM {db}.sales_aggregates WHERE window = 'month' AND dimension = 'total'""",
    "top_products": """
        SELECT product, revenue, units,
            row_number() OVER (ORDER BY revenue DESC, product) AS rank_by_revenue,
            row_number() OVER (ORDER BY units DESC, product) AS rank_by_units
        FROM (
            SELECT key AS product, sum(revenue) AS revenue, sum(units) AS units
            FROM {db}.sales_aggregates WHERE window = 'month' AND dimension = 'product'
            GROUP BY key
        )""",
    "region_performance": """
        SELECT window_start AS month, key AS region, revenue, units, orders, average_discount
        FROM {db}.sales_aggregates WHERE window = 'month' AND dimension = 'region'""",
    "category_discount_map": """
        SELECT window_start AS month, key AS category, average_discount, orders
        FROM {db}.sales_aggregates WHERE window = 'month' AND dimension = 'category'""",
    "anomaly_report": """
        SELECT order_id, product, sold_at, revenue, score, baseline_median, baseline_mad,
            baseline_size, source, detected_at
        FROM {db}.anomalies FINAL""",
}
"""The reports, as views over the aggregates: every window, dimension and partition
summed, late sales included."""


async def migrate(database: Database) -> None:
    db = database.name
    await database.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    for ddl in TABLES.values():
        await database.command(ddl.format(db=db))
    # A `sales` created before its rows kept their block numbers.
    await database.command(f"ALTER TABLE {db}.sales MODIFY SETTING {_BLOCK_NUMBERS}")
    [(reconciliations,)] = await database.rows(
        "SELECT count() FROM system.columns WHERE database = {db:String} "
        "AND table = 'aggregates' AND name = 'reconciliation'",
        {"db": db},
    )
    if not reconciliations:
        # Late totals from before they were counted by reconciliation: their rows get
        # 0, the first reconciliation's, which counts every late sale and replaces them.
        await database.command(
            f"ALTER TABLE {db}.aggregates ADD COLUMN reconciliation UInt64 AFTER partition, "
            f"MODIFY ORDER BY {_AGGREGATES_KEY}"
        )
    counting = [await database.command(f"EXISTS TABLE {db}.{name}") for name in SOURCE_LINES]
    for name, query in SOURCE_LINES.items():
        await database.command(
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{name} TO {db}.source_lines "
            f"AS {query.format(db=db)}"
        )
    if not all(counting):
        # Rows written before the views were: counted again if the views saw them too,
        # which changes no bitmap.
        for query in SOURCE_LINES.values():
            await database.command(f"INSERT INTO {db}.source_lines {query.format(db=db)}")
    for name, query in VIEWS.items():
        await database.command(f"CREATE OR REPLACE VIEW {db}.{name} AS {query.format(db=db)}")

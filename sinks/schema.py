"""The ClickHouse schema, created idempotently at start-up.

Every table that the pipeline writes is a ReplacingMergeTree on the row's
natural key, and accepts insert dedup tokens: a re-delivered batch is dropped
by its token, a re-processed row (after a crash) replaces itself by its key.
Counting queries use `uniqExact` on the key or `FINAL`, so they are right
before merges happen.
"""

from __future__ import annotations

from sinks.database import Database

__all__ = ["migrate", "TABLES"]

_DEDUP = "non_replicated_deduplication_window = 10000"
_PROVENANCE = (
    "source LowCardinality(String), source_kind LowCardinality(String), "
    "source_id String, line UInt64"
)
"""Where a row came from: every table of rows carries it, for per-source accounting."""

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
            {_PROVENANCE},
            seen_at DateTime64(3, 'UTC'),
            ingested_at DateTime64(3, 'UTC'),
            written_at DateTime64(3, 'UTC') DEFAULT now64(3)
        ) ENGINE = ReplacingMergeTree(ingested_at)
        ORDER BY order_id
        SETTINGS {_DEDUP}""",
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
}


async def migrate(database: Database) -> None:
    await database.command(f"CREATE DATABASE IF NOT EXISTS {database.name}")
    for ddl in TABLES.values():
        await database.command(ddl.format(db=database.name))

"""Every Prometheus metric tillstream exports, in one place so dashboards can rely on them.

Names follow `tillstream_<component>_<what>_<unit>`.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from tillstream.records import ReasonCode

__all__ = [
    "FILES",
    "WATCHER_ROWS_READ",
    "WATCHER_CHUNKS_PUBLISHED",
    "WORKER_ROWS",
    "WORKER_REJECTS",
    "WORKER_DUPLICATES",
    "WORKER_CHUNK_SECONDS",
    "WORKER_LATE_SALES",
    "WORKER_AGGREGATE_UPDATES",
    "WORKER_ANOMALIES",
    "WORKER_EXPIRED",
    "SINK_ROWS_WRITTEN",
    "SINK_BATCH_ROWS",
    "SINK_FLUSH_SECONDS",
    "SINK_ERRORS",
    "SINK_RETRIES",
    "SINK_CONSUMER_LAG",
    "END_TO_END_SECONDS",
    "COMPONENT_UP",
    "NOTIFICATIONS",
    "RUNTIME_DEPENDENCY_UP",
    "WORKER_CONSUMER_LAG",
    "SINK_LAST_WRITE",
    "POLLER_RUNS",
    "POLLER_REQUESTS",
    "POLLER_RECORDS_READ",
    "POLLER_ROWS",
    "POLLER_RUN_SECONDS",
    "POLLER_LAST_SUCCESS",
]

FILES = Counter("tillstream_watcher_files_total", "Files by final status", ["status"])
WATCHER_ROWS_READ = Counter("tillstream_watcher_rows_read_total", "Rows read from files")
WATCHER_CHUNKS_PUBLISHED = Counter(
    "tillstream_watcher_chunks_published_total", "Raw chunks published to Kafka"
)
WORKER_ROWS = Counter(
    "tillstream_worker_rows_total",
    "Rows leaving a worker stage, by stage and outcome",
    ["stage", "outcome"],
)
WORKER_REJECTS = Counter(
    "tillstream_worker_rejects_total", "Rejected rows by reason code", ["reason"]
)
WORKER_DUPLICATES = Counter(
    "tillstream_worker_duplicates_total", "Exact re-deliveries of an order, dropped"
)
WORKER_CHUNK_SECONDS = Histogram(
    "tillstream_worker_chunk_seconds",
    "Time to process one message, by stage",
    ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
WORKER_LATE_SALES = Counter(
    "tillstream_worker_late_sales_total",
    "Sales that arrived after their window closed, by window size",
    ["window"],
)
WORKER_AGGREGATE_UPDATES = Counter(
    "tillstream_worker_aggregate_updates_total", "Aggregate values emitted to sales.aggregates"
)
WORKER_ANOMALIES = Counter(
    "tillstream_worker_anomalies_total", "Sales found to be revenue outliers for their product"
)
WORKER_EXPIRED = Counter(
    "tillstream_worker_expired_total",
    "State dropped: orders past the dedupe retention, windows closed for good",
    ["table"],
)
SINK_ROWS_WRITTEN = Counter(
    "tillstream_sink_rows_written_total", "Rows written to ClickHouse, by table", ["table"]
)
SINK_BATCH_ROWS = Histogram(
    "tillstream_sink_batch_rows",
    "Rows per ClickHouse insert",
    buckets=(10, 100, 1_000, 10_000, 50_000, 100_000, 250_000, 1_000_000),
)
SINK_FLUSH_SECONDS = Histogram(
    "tillstream_sink_flush_seconds",
    "Time to write one batch to ClickHouse",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SINK_ERRORS = Counter("tillstream_sink_errors_total", "Failed ClickHouse writes, by kind", ["kind"])
SINK_RETRIES = Counter("tillstream_sink_retries_total", "ClickHouse write retries")
SINK_CONSUMER_LAG = Gauge(
    "tillstream_sink_consumer_lag_messages",
    "Messages not yet written, per topic and partition",
    ["topic", "partition"],
)
END_TO_END_SECONDS = Histogram(
    "tillstream_end_to_end_seconds",
    "From a source being seen to all its rows being visible in ClickHouse",
    buckets=(0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 300, 1800),
)
COMPONENT_UP = Gauge("tillstream_component_up", "1 while a component runs", ["component"])
RUNTIME_DEPENDENCY_UP = Gauge(
    "tillstream_runtime_dependency_up",
    "1 while a dependency (kafka, clickhouse) answers the process's probe",
    ["dependency"],
)
WORKER_CONSUMER_LAG = Gauge(
    "tillstream_worker_consumer_lag_messages",
    "Messages the worker group has not committed yet, per topic and partition",
    ["topic", "partition"],
)
SINK_LAST_WRITE = Gauge(
    "tillstream_sink_last_write_timestamp_seconds",
    "When the sink last wrote rows to ClickHouse (its start time before the first write)",
)
POLLER_RUNS = Counter(
    "tillstream_poller_runs_total", "Poll runs by poller and final status", ["poller", "status"]
)
POLLER_REQUESTS = Counter(
    "tillstream_poller_requests_total",
    "HTTP requests of pollers by outcome (ok, server_error, rate_limited, connection_error, "
    "client_error)",
    ["poller", "outcome"],
)
POLLER_RECORDS_READ = Counter(
    "tillstream_poller_records_read_total", "Records fetched by a poller", ["poller"]
)
POLLER_ROWS = Counter(
    "tillstream_poller_rows_total",
    "Rows of a poller's finished runs by outcome (clean, rejected, duplicate)",
    ["poller", "outcome"],
)
POLLER_RUN_SECONDS = Histogram(
    "tillstream_poller_run_seconds",
    "From a poll run's start to its rows being accounted for (or its failure)",
    ["poller"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
POLLER_LAST_SUCCESS = Gauge(
    "tillstream_poller_last_success_timestamp_seconds",
    "When a poller's last run was accounted for",
    ["poller"],
)

# Labelled series exist only once used; created here at zero, so dashboards and alerts
# see "none yet" rather than "no such series". (Not COMPONENT_UP: a zero there would
# claim that a component this process does not run is down.)
for _kind in ("connection", "data"):
    SINK_ERRORS.labels(_kind)
for _status in ("done", "failed", "already_seen"):
    FILES.labels(_status)
for _stage, _outcome in (
    ("clean", "valid"),
    ("clean", "rejected"),
    ("dedupe", "clean"),
    ("dedupe", "conflict"),
):
    WORKER_ROWS.labels(_stage, _outcome)
for _stage in ("clean", "dedupe"):
    WORKER_CHUNK_SECONDS.labels(_stage)
for _reason in ReasonCode:
    WORKER_REJECTS.labels(str(_reason))

NOTIFICATIONS = Counter(
    "tillstream_notifier_notices_total",
    "Notices by outcome (sent, retried, failed, dropped)",
    ["outcome"],
)

"""Scale-out: end-to-end throughput with 1, 2 and 4 worker processes on Apache Kafka.

One Apache Kafka broker on loopback serves every run; each run is a fresh `up`
(watcher, sink and one worker) with its own topics, plus `worker` processes that
join its consumer group. Several files are dropped at once, when every member
holds partitions: a file's raw chunks share one partition (its source id), so one
worker cleans a file, in order, while the dedupe stage spreads every file's orders
over all partitions. A run counts only if every file's history and ClickHouse
equal its ground truth. All processes share this machine's cores, so the figures
say how much another process adds here, not on separate machines.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from aiokafka.admin import AIOKafkaAdminClient  # noqa: E402

from benchmarks._common import (  # noqa: E402
    BenchmarkError,
    UpRun,
    check_clickhouse,
    check_history,
    fmt_int,
    parser,
    progress,
    read_truth,
    report,
    sample_file,
    start,
)
from tests.pipeline import TillstreamProcess  # noqa: E402
from tests.services.apache_kafka import ApacheKafka  # noqa: E402

CLEANED = "tillstream_worker_rows_total"


@dataclass(frozen=True)
class ScaleRun:
    workers: int
    rows: int
    seconds: float
    cleaned: list[float]
    """Each worker's share of the rows cleaned, `up`'s own worker first."""
    deduplicated: list[float]
    """Each worker's share of the sales deduplicated."""

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


async def _group_members(bootstrap_servers: str, group: str) -> tuple[str, int]:
    """The group's state and how many members it has, as the broker reports them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        [response] = await admin.describe_consumer_groups([group])
        _error, _group, state, _kind, _protocol, members, *_ = response.groups[0]
        return state, len(members)
    finally:
        await admin.close()


def _wait_for_members(bootstrap_servers: str, group: str, count: int, timeout: float) -> None:
    """Wait until the group is stable with `count` members, so the file meets them all."""
    started = time.monotonic()
    last = ("?", 0)
    while time.monotonic() - started < timeout:
        last = asyncio.run(_group_members(bootstrap_servers, group))
        if last == ("Stable", count):
            progress(f"  {group}: {count} members, stable")
            return
        time.sleep(0.5)
    raise BenchmarkError(f"{group} not stable with {count} members: {last}")


def _shares(members: list[TillstreamProcess], stage: str) -> list[float]:
    counts = [member.metric(CLEANED, stage=stage) for member in members]
    return [count / sum(counts) for count in counts]


def _run(
    paths: list[Path], root: Path, kafka: ApacheKafka, workers: int, timeout: float
) -> ScaleRun:
    namespace = f"scale{workers}-{time.strftime('%H%M%S')}"
    config = {
        "kafka": {
            "bootstrap_servers": kafka.bootstrap_servers,
            "topic_prefix": f"{namespace}.",
            "group_prefix": namespace,
        }
    }
    with UpRun(root / namespace, config) as up:
        extras: list[TillstreamProcess] = [
            up.pipeline.spawn("worker", f"worker-{n}") for n in range(2, workers + 1)
        ]
        _wait_for_members(kafka.bootstrap_servers, f"{namespace}-worker", workers, timeout)
        staged = [up.stage(path) for path in paths]
        progress(f"{workers} worker(s): dropping {len(paths)} files")
        dropped = time.monotonic()
        for path in staged:
            up.drop(path)
        done = [up.wait_done(path.name, timeout - (time.monotonic() - dropped)) for path in staged]
        for path, source, row in zip(staged, paths, (d.row for d in done), strict=True):
            truth = read_truth(source)
            check_history(path.name, row, truth)
            check_clickhouse(up.pipeline, row["source_id"], truth)
        members = [up.pipeline, *extras]
        run = ScaleRun(
            workers,
            sum(read_truth(path).rows for path in paths),
            max(d.done_at for d in done) - dropped,
            _shares(members, "clean"),
            _shares(members, "dedupe"),
        )
        progress(f"  done after {run.seconds:.1f}s ({run.rate:,.0f} rows/s)")
    return run


def main(argv: list[str] | None = None) -> int:
    arguments = parser(__doc__ or "", timeout=1800)
    arguments.add_argument("--rows", type=int, default=400_000, help="rows in all files")
    arguments.add_argument("--files", type=int, default=8, help="files dropped at once")
    arguments.add_argument("--seed", type=int, default=8, help="generator seed")
    arguments.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2, 4], help="worker processes per run"
    )
    args = start(arguments, argv)
    paths = [
        sample_file(args.rows // args.files, args.seed + n, f"F{n}", args.work_dir)
        for n in range(args.files)
    ]
    root = args.work_dir / "runs" / f"scale-out-{time.strftime('%Y%m%d-%H%M%S')}"
    with ApacheKafka(heap="1g") as kafka:
        progress(f"Apache Kafka at {kafka.bootstrap_servers}")
        runs = [_run(paths, root, kafka, workers, args.timeout) for workers in args.workers]

    base = runs[0]
    headers = [
        "worker processes",
        "rows",
        "seconds",
        "rows/s",
        f"vs {base.workers}",
        "cleaned by each",
        "deduplicated by each",
    ]
    rows = [
        [
            str(run.workers),
            fmt_int(run.rows),
            f"{run.seconds:.1f}",
            fmt_int(run.rate),
            f"{run.rate / base.rate:.2f}x",
            " / ".join(f"{share:.0%}" for share in run.cleaned),
            " / ".join(f"{share:.0%}" for share in run.deduplicated),
        ]
        for run in runs
    ]
    verdict = [
        f"Throughput with {run.workers} worker processes: {run.rate / base.rate:.2f}x "
        f"that of {base.workers}."
        for run in runs[1:]
    ]
    notes = [
        f"One Apache Kafka broker on loopback; {args.files} files of "
        f"{fmt_int(args.rows // args.files)} rows dropped at once, timed from the drop to "
        "the last file done; every file checked against its ground truth in the history "
        "and in ClickHouse.",
        "Each run is a fresh `up` (watcher, sink, one worker) plus `worker` processes in its "
        "consumer group; the files are dropped once the group is stable with all of them.",
        f"All processes share the {len(os.sched_getaffinity(0))} usable cores "
        "with the broker, so this is a lower bound on what separate machines give.",
    ]
    report(
        f"Scale-out, {args.files} files, {fmt_int(base.rows)} rows on Apache Kafka",
        headers,
        rows,
        verdict,
        notes,
        recorded=args.record,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

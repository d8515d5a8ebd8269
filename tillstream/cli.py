"""The `tillstream` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import getpass
import json
import logging
import os
import shutil
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from processors.corrections import export_csv
from processors.discard import discard_message
from processors.dry_run import DryRunReport, dry_run
from processors.replay import ReplayOutcome, replay_quarantine
from producers.publisher import KafkaPublisher
from producers.readers import UnreadableFileError, sha256_of
from sinks.accepted_orders import find_accepted
from sinks.history import find_source
from sinks.quarantine import (
    QuarantineFilter,
    letters_by_id,
    letters_with_ids,
    list_letters,
    show_letter,
    stats,
    statuses_since,
)
from tillstream.http_api import read_api_url
from tillstream.kafka_security import client_options
from tillstream.records import QuarantineStatus, ReasonCode
from tillstream.results import ResultError, ResultReader
from tillstream.settings import ConfigError, Settings, load_settings
from tillstream.topics import Topics

__all__ = ["main"]


QUIET_LOGGERS = ("faust", "mode", "aiokafka", "kafka", "aiohttp", "watchdog")


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))


def _summary(settings: Settings, runtime: Any) -> str:
    kafka = runtime.bootstrap_servers + (" (embedded)" if settings.embedded_broker else "")
    exactly_once = "on" if runtime.exactly_once else "off"
    components = set(runtime.components)
    lines = [
        f"tillstream {' + '.join(sorted(components))} is running",
        f"  kafka       {kafka}, exactly-once {exactly_once}",
    ]
    if components & {"watch", "poll", "sink"}:
        lines.append(f"  clickhouse  {settings.clickhouse_url}")
    lines.append(f"  metrics     {runtime.api_url}/metrics   health: {runtime.api_url}/health")
    if "watch" in components:
        watch = settings.watch
        lines += [
            f"  inbox       {watch.inbox.resolve()}",
            f"  archive     {watch.archive.resolve()}   failed: {watch.failed.resolve()}",
            "Drop files into the inbox; `tillstream status` shows them.",
        ]
    if "poll" in components:
        pollers = [f"{p.name} (every {p.interval_seconds:g}s)" for p in settings.pollers]
        lines.append(f"  pollers     {', '.join(pollers) or 'none configured'}")
    lines.append("Ctrl-C stops.")
    return "\n".join(lines)


async def _run(settings: Settings, components: frozenset[Any]) -> None:
    from tillstream.runtime import Runtime

    runtime = Runtime(settings, components)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    task = asyncio.create_task(runtime.run(stop))
    ready = asyncio.create_task(runtime.ready.wait())
    await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
    if runtime.ready.is_set():
        print(_summary(settings, runtime), flush=True)
    ready.cancel()
    await task
    print("tillstream stopped", flush=True)


def _command_run(settings: Settings, args: argparse.Namespace) -> int:
    from processors.transactions import WorkerFencedError
    from tillstream.runtime import ALL_COMPONENTS, Component

    components = ALL_COMPONENTS if args.command == "up" else frozenset({Component(args.command)})
    try:
        asyncio.run(_run(settings, components))
    except WorkerFencedError as exc:
        print(f"tillstream: error: {exc}; restart to resume from the commits", file=sys.stderr)
        return 1
    return 0


def _command_poll(settings: Settings, args: argparse.Namespace) -> int:
    if args.once is None:
        return _command_run(settings, args)
    name: str = args.once
    if name not in {poller.name for poller in settings.pollers}:
        raise ConfigError(f"invalid setting pollers: no poller is named {name}")
    url = read_api_url(settings.data_dir)
    if url is not None:
        request = urllib.request.Request(  # noqa: S310 - our loopback API
            f"{url}/api/pollers/{name}/run", data=b"", method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=args.wait) as response:  # noqa: S310
                entry = json.load(response)
        except urllib.error.HTTPError as exc:
            raise ResultError(f"the tillstream at {url}: {exc.read().decode()}") from None
        except (urllib.error.URLError, TimeoutError) as exc:
            raise ResultError(f"the tillstream at {url} did not answer: {exc}") from None
    else:
        from tillstream.runtime import run_poller_once

        entry = asyncio.run(run_poller_once(settings, name)).to_json()
    if args.json:
        _print_json(entry)
    elif entry["status"] == "done":
        print(
            f"poll {name}: done: {entry['rows_read']} read, {entry['valid']} valid, "
            f"{entry['rejected']} rejected, {entry['duplicates']} duplicates"
        )
    else:
        print(f"poll {name}: {entry['status']}: {entry['error']}")
    return 0 if entry["status"] == "done" else 1


def _command_generate(settings: Settings, args: argparse.Namespace) -> int:
    from tillstream.sample_data import generate_sales

    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    truth = generate_sales(
        out,
        args.rows,
        args.seed,
        bad_fraction=args.bad_fraction,
        file_format=args.format,
        compress=args.gzip,
    )
    truth_path = out.with_name(out.name + ".truth.json")
    truth_path.write_text(truth.to_json(), encoding="utf-8")
    print(f"wrote {truth.rows} rows to {out}; ground truth in {truth_path}")
    return 0


def _print_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(value) for value in row] for row in rows]
    widths = [max(len(line[i]) for line in [list(header), *cells]) for i in range(len(header))]
    for line in [list(header), *cells]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str, ensure_ascii=False))


def _command_status(settings: Settings, args: argparse.Namespace) -> int:
    async def read() -> list[dict[str, Any]]:
        async with ResultReader(settings) as reader:
            return await reader.status(args.limit)

    rows = asyncio.run(read())
    if args.json:
        _print_json(rows)
    elif not rows:
        print("no files ingested yet")
    else:
        _print_table(
            ("status", "read", "valid", "rejected", "dups", "started", "name"),
            [
                (
                    row["status"],
                    "" if row["rows_read"] is None else row["rows_read"],
                    row["valid"],
                    row["rejected"],
                    row["duplicates"],
                    str(row["started_at"])[:19].replace("T", " "),
                    Path(row["source_name"]).name + (f"  ({row['error']})" if row["error"] else ""),
                )
                for row in rows
            ],
        )
    return 0


def _quarantine_filter(args: argparse.Namespace) -> QuarantineFilter:
    return QuarantineFilter(
        reason=args.reason,
        source=args.source,
        status=args.status,
        since=args.since,
        until=args.until,
    )


@contextlib.asynccontextmanager
async def _publisher(reader: ResultReader, settings: Settings) -> AsyncIterator[KafkaPublisher]:
    """A publisher to the running pipeline's broker (or the configured one)."""
    bootstrap = reader.kafka_bootstrap()
    if not bootstrap:
        raise ConfigError(
            "invalid setting kafka.bootstrap_servers: this publishes to Kafka; "
            "start `tillstream up` or set it"
        )
    security = client_options(settings.kafka) if settings.kafka.bootstrap_servers else {}
    publisher = KafkaPublisher(
        bootstrap,
        settings.kafka.client_id,
        security=security,
        compression=settings.kafka.compression,
    )
    await publisher.start()
    try:
        yield publisher
    finally:
        await publisher.stop()


def _quarantine_replay(settings: Settings, args: argparse.Namespace) -> int:
    async def replay() -> ReplayOutcome:
        async with ResultReader(settings) as reader, _publisher(reader, settings) as publisher:
            return await replay_quarantine(
                reader.query,
                reader.database_name,
                _quarantine_filter(args),
                publisher,
                Topics.from_config(settings.kafka).raw.name,
                settings.watch.chunk_rows,
                args.wait,
            )

    outcome = asyncio.run(replay())
    if args.json:
        _print_json(outcome.__dict__)
    else:
        print(
            f"replayed {outcome.sent} rows; now: "
            + (", ".join(f"{count} {status}" for status, count in outcome.statuses.items()) or "-")
        )
        if outcome.not_replayable:
            print(f"{outcome.not_replayable} unparseable rows cannot be cleaned again")
        if not outcome.complete:
            print("not every row was handled yet; `tillstream quarantine stats` shows progress")
    return 0 if outcome.complete else 1


def _quarantine_discard(settings: Settings, args: argparse.Namespace) -> int:
    async def discard() -> tuple[set[str], dict[str, str]]:
        async with ResultReader(settings) as reader, _publisher(reader, settings) as publisher:
            database = reader.database_name
            letters = await letters_with_ids(reader.query, database, args.ids)
            missing = set(args.ids) - {letter["id"] for letter in letters}
            if missing:
                return missing, {}
            now = datetime.now(UTC)
            await publisher.publish(
                Topics.from_config(settings.kafka).dlq.name,
                [discard_message(letter, args.by, args.why, now) for letter in letters],
            )
            deadline = time.monotonic() + args.wait
            while True:
                statuses = await statuses_since(reader.query, database, args.ids, now)
                if len(statuses) == len(args.ids) or time.monotonic() >= deadline:
                    return set(), statuses
                await asyncio.sleep(0.2)

    missing, statuses = asyncio.run(discard())
    if missing:
        print(f"tillstream: error: no quarantined row has id {sorted(missing)[0]}", file=sys.stderr)
        return 1
    discarded = sum(status == "discarded" for status in statuses.values())
    print(f"discarded {discarded} of {len(args.ids)} rows (by {args.by}: {args.why})")
    return 0 if discarded == len(args.ids) else 1


def _quarantine_export(settings: Settings, args: argparse.Namespace) -> int:
    async def read() -> list[dict[str, Any]]:
        where = replace(_quarantine_filter(args), status=str(QuarantineStatus.QUARANTINED))
        async with ResultReader(settings) as reader:
            database = reader.database_name
            return [
                letter
                async for page in letters_by_id(reader.query, database, where)
                for letter in page
            ]

    letters = asyncio.run(read())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(export_csv(letters), encoding="utf-8")
    print(
        f"wrote {len(letters)} quarantined rows to {args.out}; correct them and drop the file "
        "into the inbox to resolve them"
    )
    return 0


def _command_quarantine(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "export":
        return _quarantine_export(settings, args)
    if args.action == "replay":
        return _quarantine_replay(settings, args)
    if args.action == "discard":
        return _quarantine_discard(settings, args)

    async def read() -> Any:
        async with ResultReader(settings) as reader:
            database = reader.database_name
            if args.action == "show":
                return await show_letter(reader.query, database, args.id)
            if args.action == "stats":
                return await stats(reader.query, database, _quarantine_filter(args))
            return await list_letters(reader.query, database, _quarantine_filter(args), args.limit)

    result = asyncio.run(read())
    if args.action == "show" and result is None:
        print(f"tillstream: error: no quarantined row has id {args.id}", file=sys.stderr)
        return 1
    if args.json:
        _print_json(result)
    elif args.action == "show":
        for name, value in result.items():
            shown = (
                json.dumps(json.loads(value), indent=2, ensure_ascii=False)
                if name == "original"
                else value
            )
            print(f"{name:12} {shown}")
    elif args.action == "stats":
        print(f"{result['total']} quarantined rows")
        _print_table(("reason", "rows"), list(result["by_reason"].items()))
        print()
        _print_table(
            ("source", "rows"), [(Path(s).name, n) for s, n in result["by_source"].items()]
        )
    elif not result:
        print("no quarantined rows match")
    else:
        _print_table(
            ("id", "reasons", "line", "source", "last seen", "status", "first message"),
            [
                (
                    row["id"],
                    ",".join(row["reasons"]),
                    row["line"],
                    Path(row["source"]).name,
                    str(row["last_seen"])[:19].replace("T", " "),
                    row["status"],
                    next(iter(row["messages"].values()), "")[:60],
                )
                for row in result
            ],
        )
    return 0


class _Progress:
    """How far a long command got, a line on standard error every few seconds."""

    def __init__(self, what: str, every_seconds: float = 5.0) -> None:
        self._what = what
        self._every = every_seconds
        self._next = time.monotonic() + every_seconds

    def __call__(self, rows: int) -> None:
        if time.monotonic() >= self._next:
            self._next = time.monotonic() + self._every
            print(f"{self._what}: {rows:,} rows so far", file=sys.stderr, flush=True)


def _command_ingest(settings: Settings, args: argparse.Namespace) -> int:
    path: Path = args.file
    if not path.is_file():
        print(f"tillstream: error: {path} is not a file", file=sys.stderr)
        return 2
    if not args.dry_run:
        inbox = settings.watch.inbox
        inbox.mkdir(parents=True, exist_ok=True)
        partial = inbox / f".{path.name}.partial"
        shutil.copyfile(path, partial)
        partial.replace(inbox / path.name)
        print(f"copied {path} into {inbox}; `tillstream status` follows it")
        return 0

    async def simulate() -> tuple[dict[str, Any] | None, DryRunReport | None]:
        async with ResultReader(settings) as reader:
            database = reader.database_name
            earlier = await find_source(reader.query, database, sha256_of(path))
            if earlier is not None:
                return earlier, None

            async def known_orders(order_ids: list[str]) -> dict[str, list[str | int]]:
                return await find_accepted(reader.query, database, order_ids)

            return None, await dry_run(path, settings, known_orders, _Progress(str(path)))

    try:
        earlier, report = asyncio.run(simulate())
    except UnreadableFileError as exc:
        print(f"{path}: would fail: {exc}")
        return 1
    if earlier is not None:
        if args.json:
            _print_json({"file": str(path), "same_content_as": earlier["source_name"]})
        else:
            print(
                f"{path}: same content as {earlier['source_name']} ({earlier['status']}); "
                "ingesting it would change nothing"
            )
        return 0
    assert report is not None  # noqa: S101 - set whenever earlier is None
    if args.json:
        _print_json(report.__dict__)
        return 0
    print(
        f"{path}: {report.rows} rows would give {report.valid} valid, "
        f"{report.rejected_rows} rejected, {report.duplicates} duplicates (nothing written)"
    )
    _print_table(("reason", "rows"), sorted(report.rejected.items()))
    return 0


def _utc_time(text: str) -> datetime:
    """An ISO date or date-time on the command line; naive means UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date or date-time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _command_report(settings: Settings, args: argparse.Namespace) -> int:
    from dashboards.report import build_report, render_html

    selected: dict[str, list[str]] = {}
    for choice in args.var:
        name, _, value = choice.partition("=")
        selected.setdefault(name, []).append(value)
    report = asyncio.run(
        build_report(settings, args.time_from, args.time_to, selected, args.prometheus)
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render_html(report), encoding="utf-8")
    panels = sum(len(board.panels) for board in report.boards)
    print(f"wrote {args.out}: {panels} panels of {len(report.boards)} dashboards")
    for failure in report.failures:
        print(f"  failed: {failure}", file=sys.stderr)
    return 1 if report.failures else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tillstream", description="Streaming processor for sales data."
    )
    parser.add_argument("--config", type=Path, help="YAML settings file")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("up", help="run everything in one process (embedded by default)")
    commands.add_parser("watch", help="run the folder watcher against external Kafka")
    poll = commands.add_parser("poll", help="run the HTTP API pollers against external Kafka")
    poll.add_argument("--once", metavar="NAME", help="one run of this poller, then exit")
    poll.add_argument(
        "--wait", type=float, default=600.0, help="seconds to wait for the run (with --once)"
    )
    poll.add_argument("--json", action="store_true", help="the run's history entry (with --once)")
    commands.add_parser("worker", help="run the Faust agents against external Kafka")
    commands.add_parser("sink", help="run the ClickHouse sink against external Kafka")
    generate = commands.add_parser(
        "generate", help="write a messy sample file and its ground truth"
    )
    generate.add_argument("--rows", type=int, default=10_000)
    generate.add_argument("--seed", type=int, default=1)
    generate.add_argument("--out", type=Path, default=Path("inbox/sales.csv"))
    generate.add_argument("--format", choices=["csv", "tsv", "json", "ndjson"], default="csv")
    generate.add_argument("--gzip", action="store_true")
    generate.add_argument("--bad-fraction", type=float, default=0.15)
    status = commands.add_parser("status", help="show the per-file ingestion history")
    status.add_argument("--json", action="store_true")
    status.add_argument("--limit", type=int, default=50)
    ingest = commands.add_parser("ingest", help="hand a file to the watcher, or --dry-run it")
    ingest.add_argument("file", type=Path)
    ingest.add_argument(
        "--dry-run", action="store_true", help="report what would happen; write nothing"
    )
    ingest.add_argument("--json", action="store_true")
    quarantine = commands.add_parser("quarantine", help="review quarantined rows")
    actions = quarantine.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (
        ("list", "list quarantined rows"),
        ("stats", "counts per reason and source"),
    ):
        review = actions.add_parser(action, help=text)
        review.add_argument("--reason", choices=[str(code) for code in ReasonCode])
        review.add_argument("--source", help="part of a file name, or the start of its hash")
        review.add_argument(
            "--status", choices=["quarantined", "replayed", "resolved", "discarded"]
        )
        review.add_argument("--since", type=_utc_time, help="last seen at or after (ISO)")
        review.add_argument("--until", type=_utc_time, help="last seen before (ISO)")
        review.add_argument("--limit", type=int, default=50)
        review.add_argument("--json", action="store_true")
    replay = actions.add_parser(
        "replay", help="clean quarantined rows again with the current rules"
    )
    replay.add_argument("--reason", choices=[str(code) for code in ReasonCode])
    replay.add_argument("--source", help="part of a file name, or the start of its hash")
    replay.add_argument("--since", type=_utc_time, help="last seen at or after (ISO)")
    replay.add_argument("--until", type=_utc_time, help="last seen before (ISO)")
    replay.add_argument("--status", default=None, help=argparse.SUPPRESS)
    replay.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the outcome")
    replay.add_argument("--json", action="store_true")
    export = actions.add_parser("export", help="write quarantined rows to a CSV to correct")
    export.add_argument("--out", type=Path, default=Path("quarantine-export.csv"))
    export.add_argument("--reason", choices=[str(code) for code in ReasonCode])
    export.add_argument("--source", help="part of a file name, or the start of its hash")
    export.add_argument("--since", type=_utc_time, help="last seen at or after (ISO)")
    export.add_argument("--until", type=_utc_time, help="last seen before (ISO)")
    export.add_argument("--status", default=None, help=argparse.SUPPRESS)
    discard = actions.add_parser("discard", help="drop quarantined rows on purpose")
    discard.add_argument("ids", nargs="+", metavar="ID")
    discard.add_argument("--why", required=True, help="the reason, kept with the rows")
    discard.add_argument("--by", default=getpass.getuser(), help="who (default: you)")
    discard.add_argument("--wait", type=float, default=60.0)
    show = actions.add_parser("show", help="one quarantined row in full")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    report = commands.add_parser(
        "report", help="render the dashboards' panels into one self-contained HTML file"
    )
    report.add_argument("--out", type=Path, default=Path("tillstream-report.html"))
    report.add_argument("--from", dest="time_from", help="e.g. now-7d or 2025-01-01")
    report.add_argument("--to", dest="time_to", help="default: each dashboard's own range")
    report.add_argument(
        "--var", action="append", default=[], metavar="NAME=VALUE", help="e.g. region=North"
    )
    report.add_argument("--prometheus", metavar="URL", help="fill the Prometheus panels")
    return parser


COMMANDS = {
    "up": _command_run,
    "watch": _command_run,
    "poll": _command_poll,
    "worker": _command_run,
    "sink": _command_run,
    "generate": _command_generate,
    "status": _command_status,
    "quarantine": _command_quarantine,
    "ingest": _command_ingest,
    "report": _command_report,
}


YOUNG_COLLECTION_EVERY = 10_000
"""Allocations between two collections of the youngest generation (Python's default is
700). The worker allocates several objects a row and keeps one per order it remembers;
at the default, the cycle collector took a sixth of the 1M-row benchmark's time
(docs/benchmarks.md). Cycles are rare here, so collecting them later costs little."""


MALLOC_ARENAS = 2
"""The most malloc arenas glibc may make. By default a thread that allocates gets an arena
of its own, up to 8 per core, and memory freed in an arena stays there for that
arena's threads; `up` runs some 170 threads (chDB's, RocksDB's, the executors'). With
two, its peak on the 1M-row benchmark was 0.92x, at 0.99x the speed (docs/benchmarks.md)."""
_M_ARENA_MAX = -8
"""mallopt's parameter for it (glibc's malloc.h)."""


def limit_malloc_arenas() -> None:
    """Set MALLOC_ARENAS before any thread starts, unless the MALLOC_ARENA_MAX variable
    sets a number already; a C library other than glibc is left as it is."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except AttributeError:
        return
    mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


def main(argv: list[str] | None = None) -> int:
    gc.set_threshold(YOUNG_COLLECTION_EVERY, *gc.get_threshold()[1:])
    limit_malloc_arenas()
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"tillstream: error: {exc}", file=sys.stderr)
        return 2
    _configure_logging(settings.log_level)
    try:
        return COMMANDS[args.command](settings, args)
    except ConfigError as exc:
        print(f"tillstream: error: {exc}", file=sys.stderr)
        return 2
    except ResultError as exc:
        print(f"tillstream: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tillstream: interrupted", file=sys.stderr)
        return 130  # what a shell reports for a command stopped by Ctrl-C
    except BrokenPipeError:
        # The reader went away (`tillstream quarantine list | head`): no traceback, and
        # nothing more written at exit to the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""The `tillstream` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import urllib.request
from pathlib import Path
from typing import Any

from tillstream.settings import ConfigError, Settings, load_settings

__all__ = ["main"]

log = logging.getLogger("tillstream")

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
    producers = "on" if runtime.idempotent else "off"
    components = set(runtime.components)
    lines = [
        f"tillstream {' + '.join(sorted(components))} is running",
        f"  kafka       {kafka}, idempotent producers {producers}",
    ]
    if components & {"watch", "sink"}:
        lines.append(f"  clickhouse  {settings.clickhouse_url}")
    lines.append(f"  metrics     {runtime.api_url}/metrics   health: {runtime.api_url}/health")
    if "watch" in components:
        watch = settings.watch
        lines += [
            f"  inbox       {watch.inbox.resolve()}",
            f"  archive     {watch.archive.resolve()}   failed: {watch.failed.resolve()}",
            "Drop files into the inbox; `tillstream status` shows them.",
        ]
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
    from tillstream.runtime import ALL_COMPONENTS, Component

    components = ALL_COMPONENTS if args.command == "up" else frozenset({Component(args.command)})
    asyncio.run(_run(settings, components))
    return 0


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


async def _history_rows(settings: Settings, limit: int) -> list[dict[str, Any]]:
    from tillstream.http_api import read_api_url

    url = read_api_url(settings.data_dir)
    if url is not None:
        try:
            with urllib.request.urlopen(f"{url}/api/status?limit={limit}", timeout=10) as response:  # noqa: S310 - our own loopback API
                rows: list[dict[str, Any]] = json.load(response)
                return rows
        except OSError:
            log.warning("no answer from %s; reading the database directly", url)
    from sinks.database import Database
    from sinks.history import IngestionHistory
    from sinks.schema import migrate

    database = Database(settings.clickhouse_url, settings.clickhouse)
    try:
        await migrate(database)
        return [entry.to_json() for entry in await IngestionHistory(database).recent(limit)]
    finally:
        await database.close()


def _command_status(settings: Settings, args: argparse.Namespace) -> int:
    rows = asyncio.run(_history_rows(settings, args.limit))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no files ingested yet")
        return 0
    header = ("status", "read", "valid", "rejected", "dups", "started", "name")
    table = [
        (
            row["status"],
            "" if row["rows_read"] is None else str(row["rows_read"]),
            str(row["valid"]),
            str(row["rejected"]),
            str(row["duplicates"]),
            row["started_at"][:19].replace("T", " "),
            Path(row["source_name"]).name + (f"  ({row['error']})" if row["error"] else ""),
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *table]) for i in range(len(header))]
    for line in [header, *table]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tillstream", description="Streaming processor for sales data."
    )
    parser.add_argument("--config", type=Path, help="YAML settings file")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("up", help="run everything in one process (embedded by default)")
    commands.add_parser("watch", help="run the folder watcher against external Kafka")
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
    return parser


COMMANDS = {
    "up": _command_run,
    "watch": _command_run,
    "worker": _command_run,
    "sink": _command_run,
    "generate": _command_generate,
    "status": _command_status,
}


def main(argv: list[str] | None = None) -> int:
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


if __name__ == "__main__":
    sys.exit(main())

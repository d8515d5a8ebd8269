"""Hostile files below the pipeline: the reader, the ingestor and the watcher alone.

The corpus is tests/hostile_corpus.py; tests/integration/test_hostile_input.py
drops the same files into a running `tillstream up`. Here each refusal is
checked where it is decided, fast, with the ingestor's Kafka publisher and
ingestion history replaced by recorders (the integration test has the real ones).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import cast

import numpy as np
import pytest

from producers import readers
from producers.file_ingest import MAX_CHUNK_MESSAGE_BYTES, FileIngestor
from producers.publisher import KafkaPublisher, Message
from producers.readers import (
    CHUNK_BYTES,
    RowChunk,
    UnreadableFileError,
    read_chunks,
    sha256_of,
)
from producers.watcher import FolderWatcher
from sinks.history import HistoryEntry, IngestionHistory, SourceStatus
from tests.hostile_corpus import HEADER, HostileCase, build_corpus
from tillstream.records import RawChunk, SourceRef
from tillstream.sample_data import generate_sales
from tillstream.settings import WatchConfig, default_rules


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[HostileCase]]]:
    root = tmp_path_factory.mktemp("corpus")
    cases = build_corpus(root / "staging")
    inbox = root / "inbox"
    inbox.mkdir()
    for case in cases:
        case.write(inbox / case.name)
    yield inbox, cases
    for case in cases:
        path = inbox / case.name
        if path.exists() and not path.is_symlink():
            path.chmod(0o600)
    shutil.rmtree(root)


def _read_all(path: Path, chunk_rows: int = 2000) -> list[RowChunk]:
    return list(read_chunks(path, chunk_rows))


# --- the reader on the corpus -------------------------------------------------------


def test_the_reader_refuses_each_corpus_file_it_must_with_its_reason(
    corpus: tuple[Path, list[HostileCase]],
) -> None:
    inbox, cases = corpus
    wrong = []
    for case in cases:
        if case.reader_error is None or (case.key == "unreadable" and os.geteuid() == 0):
            continue
        try:
            sha256_of(inbox / case.name)
            _read_all(inbox / case.name)
        except UnreadableFileError as exc:
            if case.reader_error not in str(exc) or "\n" in str(exc):
                wrong.append(f"{case.key}: {exc}")
        else:
            wrong.append(f"{case.key}: read without error")
    assert wrong == []


def test_the_reader_reads_every_other_corpus_file_whole(
    corpus: tuple[Path, list[HostileCase]],
) -> None:
    inbox, cases = corpus
    for case in cases:
        if case.status != "done":
            continue
        chunks = _read_all(inbox / case.name)
        read = sum(len(chunk.rows) + len(chunk.unparseable) for chunk in chunks)
        expected = case.truth.rows if case.truth else case.valid + sum(case.rejected.values())
        assert read == expected, case.key
        for chunk in chunks:
            assert all(len(row) == len(chunk.columns) for row in chunk.rows)


# --- binary content --------------------------------------------------------------------


def test_random_bytes_without_a_nul_in_their_first_kib_are_binary(tmp_path: Path) -> None:
    """Before: only the first KiB was probed, and random bytes read as cp1252 rows."""
    head = bytes(range(1, 256)) * 4
    path = tmp_path / "photo.csv"
    path.write_bytes(b"id,name\n" + head + bytes(range(256)) * 64)

    with pytest.raises(UnreadableFileError, match="^binary content, not a text file$"):
        read_chunks(path, 10)


# --- gzip ------------------------------------------------------------------------------


def _bomb(path: Path, members: int = 40) -> Path:
    member = gzip.compress(b"order_id,product\n" + b"1,x\n" * (16 * 2**20), mtime=0)
    path.write_bytes(member * members)
    return path


@pytest.mark.parametrize("buffer_size", [8 * 2**10, 256 * 2**10], ids=["8KiB", "256KiB"])
def test_a_gzip_bomb_is_refused_before_its_first_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, buffer_size: int
) -> None:
    """Before: only the 10 GiB limit, so 2.5 GiB of `1,x` rows were read and published.

    256 KiB is what clickhouse-connect sets io.DEFAULT_BUFFER_SIZE to in every
    process that imports it, `tillstream up` included.
    """
    path = _bomb(tmp_path / "bomb.csv.gz")
    monkeypatch.setattr(io, "DEFAULT_BUFFER_SIZE", buffer_size)

    with pytest.raises(
        UnreadableFileError,
        match=r"^gzip content expands more than 100 times \(17 MiB from \d\d KiB\) "
        r"\(gzip bomb\?\), stopped reading$",
    ):
        read_chunks(path, 2000)


def test_a_bomb_behind_an_ordinary_start_is_stopped_while_reading() -> None:
    """The ratio is judged on the whole content so far: 2 MiB that compress badly
    buy the bomb behind them at most 100 times their compressed size."""
    start = base64.b64encode(np.random.default_rng(1).bytes(3 * 2**19))
    data = gzip.compress(start, mtime=0) + gzip.compress(b"1,x\n" * (64 * 2**20), mtime=0) * 4
    unzipped = readers._gzip_reader(io.BytesIO(data), 10 * 2**30, readers.MAX_INFLATION)

    with pytest.raises(UnreadableFileError, match="gzip content expands more than 100 times"):
        while unzipped.read(2**20):
            pass


def test_repetitive_but_ordinary_gzip_content_reads_whole(tmp_path: Path) -> None:
    """Sales CSV compresses 4-5 times, one row with a counter about 16 times."""
    lines = [b"order_id,sold_at,product,quantity,unit_price,store_id\n"]
    lines += [b"O-%07d,2025-01-01,Widget,1,9.99,S1\n" % n for n in range(700_000)]
    data = b"".join(lines)
    path = tmp_path / "repetitive.csv.gz"
    path.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
    assert len(data) > 20 * 2**20 and len(data) > 15 * path.stat().st_size

    assert sum(len(chunk.rows) for chunk in read_chunks(path, 50_000)) == 700_000


def test_gzip_members_and_zero_padding_read_as_one_content(tmp_path: Path) -> None:
    path = tmp_path / "members.csv.gz"
    path.write_bytes(
        gzip.compress(b"order_id,product\n1,a\n")
        + bytes(7)
        + gzip.compress(b"2,b\n")
        + gzip.compress(b"")
        + bytes(3)
    )

    assert [chunk.rows for chunk in read_chunks(path, 10)] == [[["1", "a"], ["2", "b"]]]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (gzip.compress(b"order_id,product\n1,a\n") + b"trailing garbage", "invalid gzip"),
        (gzip.compress(b"order_id,product\n1,a\n")[:-4], "ends in the middle of a member"),
        (gzip.compress(b"order_id,product\n1,a\n")[:-8] + b"\0\0\0\0\0\0\0\0", "invalid gzip"),
    ],
    ids=["garbage-after", "no-length", "bad-crc"],
)
def test_damaged_gzip_is_refused(tmp_path: Path, data: bytes, reason: str) -> None:
    path = tmp_path / "damaged.csv.gz"
    path.write_bytes(data)

    with pytest.raises(UnreadableFileError, match=reason):
        list(read_chunks(path, 10))


# --- entries that are not regular files ----------------------------------------------------


def test_a_symbolic_link_is_never_followed(tmp_path: Path) -> None:
    """Before: the watcher saw it, and its target's content was hashed and published."""
    target = tmp_path / "elsewhere" / "secret.csv"
    target.parent.mkdir()
    target.write_text("order_id,product\n1,secret\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)

    reason = f"^a symbolic link \\(to '{target}'\\), not a regular file: refused, links are never"
    for read in (sha256_of, lambda path: read_chunks(path, 10)):
        with pytest.raises(UnreadableFileError, match=reason):
            read(link)


def test_a_named_pipe_is_refused_without_blocking(tmp_path: Path) -> None:
    """Before: opening it waited for a writer forever, holding an ingest slot."""
    pipe = tmp_path / "pipe.csv"
    os.mkfifo(pipe)
    outcome: list[BaseException | str] = []

    def read() -> None:
        try:
            sha256_of(pipe)
            outcome.append("read")
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(5)
    if worker.is_alive():
        os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a named pipe blocked")
    [result] = outcome
    assert isinstance(result, UnreadableFileError)
    assert str(result) == "a named pipe, not a regular file: refused"


_READ_AS_ANOTHER_USER = """
import sys
from pathlib import Path
from producers.readers import UnreadableFileError, sha256_of
try:
    sha256_of(Path(sys.argv[1]))
except UnreadableFileError as exc:
    print(exc)
"""


def test_a_file_without_read_permission_is_refused(tmp_path: Path) -> None:
    """Before: PermissionError was taken for a vanished file and retried every 2 s."""
    path = tmp_path / "locked.csv"
    path.write_text("order_id,product\n1,x\n")
    path.chmod(0)
    command = [sys.executable, "-c", _READ_AS_ANOTHER_USER, str(path)]
    if os.geteuid() == 0:
        drop = "-dac_override,-dac_read_search"
        probe = ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}", "--", "true"]
        if shutil.which("setpriv") is None or subprocess.run(probe, check=False).returncode:
            pytest.skip("root without setpriv: mode 000 cannot stop root from reading a file")
        command = ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}", "--", *command]
    done = subprocess.run(
        command, capture_output=True, text=True, check=True, cwd=Path(__file__).parents[2]
    )
    assert done.stdout == "cannot read the file: permission denied (check its owner and mode)\n"


# --- wide rows -------------------------------------------------------------------------


def _write_wide(path: Path, rows: int, columns: int = 10_000) -> list[str]:
    names = HEADER + [f"extra_{n}" for n in range(columns - len(HEADER))]
    with path.open("w") as out:
        out.write(",".join(names) + "\n")
        for n in range(rows):
            out.write(",".join([f"W-{n}", "2025-03-14", "Lamp", "1", "2.00", "S1"]))
            out.write(",v" * (len(names) - len(HEADER)) + "\n")
    return names


def test_wide_rows_make_smaller_chunks_so_memory_stays_flat(tmp_path: Path) -> None:
    """Before: 2000 rows of 10,000 columns made one chunk of 20 M values (gigabytes)."""
    columns = _write_wide(tmp_path / "wide.csv", 120)

    chunks = list(read_chunks(tmp_path / "wide.csv", 2000, chunk_bytes=2**20))
    assert sum(len(chunk.rows) for chunk in chunks) == 120
    names = sum(len(name) + 6 for name in columns)
    row_bytes = names + sum(map(len, chunks[0].rows[0]))  # type: ignore[arg-type]
    # Text is counted as it is read, a block (1 MiB) at a time; names row by row.
    assert all(len(chunk.rows) * row_bytes < 2 * 2**20 + row_bytes for chunk in chunks)
    assert len(chunks) > 10
    assert CHUNK_BYTES == 16 * 2**20


# --- JSON escapes ----------------------------------------------------------------------


def test_lone_surrogate_escapes_are_kept_as_written_and_can_be_sent(tmp_path: Path) -> None:
    """Before: `"\\ud800"` decoded to a lone surrogate, which no UTF-8 encoder takes,
    so publishing the chunk raised and the file was retried forever."""
    path = tmp_path / "s.json"
    path.write_text(
        '[{"order_id": "S-\\ud800", "note\\udfff": ["\\udc00"], "product": "ok \\u00e9"}]'
    )

    [chunk] = _read_all(path)
    assert chunk.columns == ["order_id", "note\\udfff", "product"]
    assert chunk.rows == [["S-\\ud800", '["\\udc00"]', "ok é"]]
    raw = RawChunk(SourceRef("file", "x", "s.json"), 0, chunk.columns, chunk.rows, chunk.lines)
    assert RawChunk.from_json(raw.to_json()).rows == chunk.rows


# --- the ingestor ----------------------------------------------------------------------


class RecordingPublisher:
    def __init__(self) -> None:
        self.values: list[bytes] = []

    async def publish(self, topic: str, messages: list[Message]) -> int:
        self.values += [message.value or b"" for message in messages]
        return len(messages)

    def chunks(self) -> list[RawChunk]:
        return [RawChunk.from_json(value) for value in self.values]


class MemoryHistory:
    """The history's interface, in memory; a file is done as soon as it is read."""

    def __init__(self) -> None:
        self.entries: dict[str, HistoryEntry] = {}

    async def get(self, source_id: str) -> HistoryEntry | None:
        return self.entries.get(source_id)

    async def start(self, source: SourceRef, seen_at: datetime) -> HistoryEntry:
        entry = HistoryEntry(source.id, source.kind, source.name, SourceStatus.PROCESSING)
        self.entries[source.id] = entry
        return entry

    async def finish_reading(self, entry: HistoryEntry, rows_read: int) -> HistoryEntry:
        entry = replace(entry, rows_read=rows_read, status=SourceStatus.DONE)
        self.entries[entry.source_id] = entry
        return entry

    async def fail(self, entry: HistoryEntry, error: str) -> HistoryEntry:
        entry = replace(entry, status=SourceStatus.FAILED, error=error)
        self.entries[entry.source_id] = entry
        return entry


class Ingest:
    def __init__(self, root: Path, chunk_rows: int = 2000) -> None:
        self.inbox, self.archive, self.failed = root / "inbox", root / "archive", root / "failed"
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.publisher = RecordingPublisher()
        self.history = MemoryHistory()
        config = WatchConfig(
            inbox=self.inbox, archive=self.archive, failed=self.failed, chunk_rows=chunk_rows
        )
        self.ingestor = FileIngestor(
            config,
            default_rules(),
            cast(KafkaPublisher, self.publisher),
            "sales.raw",
            cast(IngestionHistory, self.history),
        )

    def __call__(self, name: str) -> tuple[SourceStatus | None, HistoryEntry]:
        status = asyncio.run(self.ingestor.ingest(self.inbox / name))
        shown = os.fsencode(name).decode("utf-8", "backslashreplace")
        [entry] = [e for e in self.history.entries.values() if Path(e.source_name).name == shown]
        return status, entry


def test_a_link_is_recorded_failed_and_moved_as_a_link(tmp_path: Path) -> None:
    ingest = Ingest(tmp_path)
    target = tmp_path / "outside.csv"
    target.write_text("order_id,product\n1,x\n")
    (ingest.inbox / "link.csv").symlink_to(target)

    status, entry = ingest("link.csv")
    assert status is SourceStatus.FAILED
    assert entry.error.startswith(f"a symbolic link (to '{target}'), not a regular file")
    assert ingest.publisher.values == []
    assert os.readlink(ingest.failed / "link.csv") == str(target)
    assert (ingest.failed / "link.csv.error.txt").read_text() == entry.error + "\n"
    assert target.read_text() == "order_id,product\n1,x\n"


def test_a_record_too_large_for_a_message_fails_the_file(tmp_path: Path) -> None:
    """Before: a 2 MiB line went out as one message, beyond what a broker at its
    defaults (1 MiB) takes, and the worker's messages carry it again."""
    ingest = Ingest(tmp_path)
    with (ingest.inbox / "big.csv").open("w") as out:
        out.write("order_id,product\n1,ok\n2," + "y" * (2 * 2**20) + "\n3,ok\n")

    status, entry = ingest("big.csv")
    assert status is SourceStatus.FAILED
    assert entry.error == "record at line 3 is too large: 2.0 MiB as a message, the limit is 1 MiB"
    assert (ingest.failed / "big.csv.error.txt").read_text() == entry.error + "\n"


def test_wide_rows_go_out_in_messages_a_broker_takes(tmp_path: Path) -> None:
    """Before: 100 rows of 10,000 columns went out as one 6 MB message, and the
    cleaning stage's messages built from it were larger still."""
    ingest = Ingest(tmp_path)
    _write_wide(ingest.inbox / "wide.csv", 100)

    status, entry = ingest("wide.csv")
    assert status is SourceStatus.DONE and entry.rows_read == 100
    chunks = ingest.publisher.chunks()
    assert [line for chunk in chunks for line in chunk.lines] == list(range(2, 102))
    for chunk, value in zip(chunks, ingest.publisher.values, strict=True):
        as_objects = len(value) + len(chunk.rows) * len(json.dumps(chunk.columns))
        assert as_objects <= MAX_CHUNK_MESSAGE_BYTES


def test_a_chunk_over_the_message_budget_is_split_in_line_order(tmp_path: Path) -> None:
    """Backslashes double in JSON, so 3 MiB of them is 6 MiB as a message."""
    ingest = Ingest(tmp_path)
    with (ingest.inbox / "escapes.csv").open("w") as out:
        out.write("order_id,product\n")
        for n in range(24):
            out.write(f"E-{n}," + "\\" * (128 * 2**10) + "\n")
        out.write('"unparseable\n')

    status, entry = ingest("escapes.csv")
    assert status is SourceStatus.DONE and entry.rows_read == 25
    chunks = ingest.publisher.chunks()
    assert [chunk.seq for chunk in chunks] == list(range(len(chunks)))
    assert len(chunks) > 1
    assert [line for chunk in chunks for line in chunk.lines] == list(range(2, 26))
    assert all(len(value) <= MAX_CHUNK_MESSAGE_BYTES for value in ingest.publisher.values)


def test_a_name_that_is_not_utf8_is_stored_with_escapes(tmp_path: Path) -> None:
    """Before: the name could not be encoded, so publishing raised on every retry."""
    ingest = Ingest(tmp_path)
    name = os.fsdecode(b"ventes-\xe9t\xe9.csv")
    generate_sales(ingest.inbox / name, 20, 1)

    status, entry = ingest(name)
    assert status is SourceStatus.DONE
    assert Path(entry.source_name).name == "ventes-\\xe9t\\xe9.csv"
    assert {chunk.source.name for chunk in ingest.publisher.chunks()} == {entry.source_name}
    assert (ingest.archive / name).exists()


def test_long_names_keep_their_sidecar_and_never_collide(tmp_path: Path) -> None:
    """Before: `<255-byte name>.error.txt` was too long to create, and the clash name
    for a second file too long to move to, so the file stayed in the inbox for ever."""
    ingest = Ingest(tmp_path)
    name = "n" * 251 + ".csv"
    for content in (b"\0binary one", b"\0binary two"):
        (ingest.inbox / name).write_bytes(content)
        assert asyncio.run(ingest.ingestor.ingest(ingest.inbox / name)) is SourceStatus.FAILED
        assert not (ingest.inbox / name).exists()
    moved = sorted(os.listdir(ingest.failed))
    assert len(moved) == 4 and all(len(os.fsencode(name)) <= 255 for name in moved)
    sidecars = [name for name in moved if name.endswith(".error.txt")]
    assert len(sidecars) == 2
    for sidecar in sidecars:
        assert (ingest.failed / sidecar).read_text() == "binary content, not a text file\n"


def test_a_newline_in_a_name_cannot_forge_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ingest = Ingest(tmp_path)
    name = "x.csv\n2026-01-01 00:00:00,000 INFO producers.file_ingest forged.csv"
    (ingest.inbox / name).write_bytes(b"\0")

    with caplog.at_level("INFO", logger="producers.file_ingest"):
        ingest(name)
    assert caplog.messages and all("\n" not in message for message in caplog.messages)


# --- the watcher -----------------------------------------------------------------------


def test_the_watcher_reports_links_and_pipes_found_at_start_up(tmp_path: Path) -> None:
    """Before: the start-up scan skipped them, so they sat in the inbox unexplained."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (tmp_path / "target.csv").write_text("order_id,product\n")
    (inbox / "link.csv").symlink_to(tmp_path / "target.csv")
    (inbox / "dangling.csv").symlink_to(tmp_path / "nowhere.csv")
    os.mkfifo(inbox / "pipe.csv")
    (inbox / "folder").mkdir()

    async def first_three() -> set[str]:
        found: set[str] = set()
        watcher = FolderWatcher(inbox, stable_seconds=0.05)
        async with asyncio.timeout(10):
            async for path in watcher.ready_files():
                found.add(path.name)
                if len(found) == 3:
                    return found
        return found

    assert asyncio.run(first_three()) == {"link.csv", "dangling.csv", "pipe.csv"}

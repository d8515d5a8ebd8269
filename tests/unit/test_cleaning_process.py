"""The cleaning stage's own process: same output as cleaning in place, and no process left
behind whatever happens to it or to the worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime

from processors.chunks import clean_chunk
from processors.cleaning_process import CleaningProcess
from tests.pipeline import wait_for
from tillstream.records import RawChunk, SourceRef
from tillstream.settings import default_rules

CHUNK = RawChunk(
    SourceRef("file", "a" * 64, "inbox/a.csv"),
    0,
    ["OrderID", "Date", "Product", "Qty", "Price"],
    [["A-1", "2025-03-01", "Lamp", "1", "$10"], ["A-2", "not a date", "Lamp", "x", "$10"]],
    [2, 3],
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return stat.read().split()[2] != "Z"


async def test_a_chunk_is_cleaned_as_in_place_and_again_after_the_process_dies() -> None:
    cleaning = CleaningProcess(default_rules(), 4)
    await cleaning.start()
    try:
        in_place = clean_chunk(CHUNK, default_rules(), 4, datetime.now(UTC))
        cleaned = await cleaning.clean(CHUNK.to_json())
        assert cleaned.valid_rows == in_place.valid_rows == 1
        assert [json.loads(m.value or b"")["reasons"] for m in cleaned.dead_letters] == [
            json.loads(m.value or b"")["reasons"] for m in in_place.dead_letters
        ]
        assert [m.partition for m in cleaned.validated] == [m.partition for m in in_place.validated]

        [first] = cleaning._pool._processes  # type: ignore[attr-defined]
        os.kill(first, signal.SIGKILL)
        again = await cleaning.clean(CHUNK.to_json())
        assert again.valid_rows == 1
        [second] = cleaning._pool._processes  # type: ignore[attr-defined]
        assert second != first
    finally:
        await cleaning.stop()
    assert not _alive(second)


def test_the_cleaning_process_exits_when_the_worker_is_killed() -> None:
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import asyncio, sys\n"
            "from processors.cleaning_process import CleaningProcess\n"
            "from tillstream.settings import default_rules\n"
            "async def main():\n"
            "    cleaning = CleaningProcess(default_rules(), 4)\n"
            "    await cleaning.start()\n"
            "    print(*cleaning._pool._processes, flush=True)\n"
            "    await asyncio.Event().wait()\n"
            "asyncio.run(main())\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout is not None
    child = int(worker.stdout.readline())
    assert _alive(child)
    worker.kill()
    worker.wait()
    wait_for(lambda: not _alive(child), 10, "the cleaning process to exit after its worker")

"""The cleaning stage runs in a process of its own, beside the worker's event loop.

Cleaning costs about 12 µs a row, much of it Python (dead letters, the JSON of the
originals). In a thread of the worker it held the GIL against everything on the
event loop (dedupe, the sink, the Kafka clients); in its own process both cores
work, and the 1M-row benchmark ran 1.25x faster (docs/benchmarks.md). A chunk goes
in as the raw message's bytes and comes back as the messages to publish.

The process is started with `spawn`, which imports the parent's main module unless it
is a package's `__main__`: `tillstream` and `python -m tillstream` are both safe.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime

from processors.chunks import CleanedChunk, clean_chunk
from tillstream.records import RawChunk
from tillstream.settings import CleaningRules

__all__ = ["CleaningProcess"]

log = logging.getLogger(__name__)

_CONTEXT = multiprocessing.get_context("spawn")
"""Not fork: the worker's threads (aiokafka, chDB) would be copied mid-flight."""


def _clean_raw(value: bytes, rules: CleaningRules, partitions: int) -> CleanedChunk:
    """A `sales.raw` message, decoded and cleaned (in the cleaning process)."""
    return clean_chunk(RawChunk.from_json(value), rules, partitions, datetime.now(UTC))


def _exit_with(parent: int) -> None:
    """In the cleaning process: exit once the worker is gone. A worker killed with
    SIGKILL cannot stop it, and it would wait for chunks forever."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _started() -> None:
    """A first task: the pool starts its process for it."""


class CleaningProcess:
    def __init__(self, rules: CleaningRules, partitions: int) -> None:
        self._rules = rules
        self._partitions = partitions
        self._pool = self._new_pool()

    @staticmethod
    def _new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            1, mp_context=_CONTEXT, initializer=_exit_with, initargs=(os.getpid(),)
        )

    async def start(self) -> None:
        """Start the process now rather than with the first chunk: it imports pandas and
        pyarrow first (about a second)."""
        await asyncio.wrap_future(self._pool.submit(_started))

    async def clean(self, value: bytes) -> CleanedChunk:
        """A process that died (killed, out of memory) is replaced, and the chunk is
        cleaned again in the new one; if that one dies too, the error is raised."""
        try:
            return await self._cleaned(value)
        except BrokenProcessPool:
            log.warning("the cleaning process died; cleaning the chunk again in a new one")
            self._pool.shutdown(wait=False)
            self._pool = self._new_pool()
            return await self._cleaned(value)

    def _cleaned(self, value: bytes) -> asyncio.Future[CleanedChunk]:
        return asyncio.get_running_loop().run_in_executor(
            self._pool, _clean_raw, value, self._rules, self._partitions
        )

    async def stop(self) -> None:
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)

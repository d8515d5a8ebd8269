"""The Faust app of the worker, with two corrections to Faust's consumer, and room
for our own transactions.

Faster fetches: Faust fixes `fetch_max_wait_ms` at 1,500 ms, and the embedded broker
(Tansu) answers a fetch only when that wait is over, even when records arrive
meanwhile: each hop through a Faust topic then took up to 1.5 s, twice per file,
which alone broke the latency target.

No records skipped after a table recovery: when a recovery ends, Faust (0.15) resumes
the input partitions and only then seeks them to their committed offsets. Records
fetched in between from the old position reach the stream after the seek, and Faust
takes the jump from the committed offset to them for a gap in a compacted topic: the
records in between are marked done, committed and never processed. And the seek
leaves a partition the group has no committed offset for (or offset 0) where those
fetches left it, so a new consumer group could start at the end of `sales.raw`. With
Apache Kafka this lost whole chunks after a restart or a rebalance (seen as a later
version of an order accepted in place of the first) and stalled a replay under a new
group. Here the input partitions stay paused until the seek is done, and the seek
takes those without a committed offset back to their first. Nor does a partition
resume early when its agent's buffer drains: Faust (0.15) takes a partition whose
buffer filled back into its fetches once the buffer drains, even if a recovery paused
it meanwhile, and the agent would then process records before its tables are
restored and before the seek.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import faust
from faust.transport.drivers import aiokafka as driver
from faust.types import TP, TransportT

__all__ = ["FETCH_MAX_WAIT_MS", "App"]

FETCH_MAX_WAIT_MS = 500
"""At 100 ms the worker's consumer set off a storm of metadata requests against the
embedded broker (a quarter of the CPU time, throughput down 3x); 500 ms keeps a 1,000-row
file near 1.4 s (p50) at a steady trickle."""


class _ConsumerThread(driver.AIOKafkaConsumerThread):  # type: ignore[misc]
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Both read when the consumer starts.
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        if self.app.offsets_in_transactions:
            consumer._isolation_level = "read_committed"
        return consumer


class _Consumer(driver.Consumer):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting_seek: set[TP] = set()

    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def resume_partitions(self, tps: Iterable[TP]) -> None:
        """Changelog partitions resume now; input partitions at the next seek, which
        Faust's recovery always does right after resuming them."""
        tps = set(tps)
        inputs = {tp for tp in tps if not self._is_changelog_tp(tp)}
        self._awaiting_seek |= inputs
        super().resume_partitions(tps - inputs)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed: Mapping[TP, int] = await super().seek_to_committed()
        first = [
            tp for tp, offset in committed.items() if not offset and not self._is_changelog_tp(tp)
        ]
        if first:
            await self._thread.seek_to_beginning(*first)
        return committed

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        if self.app.offsets_in_transactions:
            return True  # committed with each event's outputs already
        return bool(await super()._commit(offsets))

    async def perform_seek(self) -> None:
        await super().perform_seek()
        awaiting, self._awaiting_seek = self._awaiting_seek, set()
        super().resume_partitions(awaiting & set(self.assignment()))

    def on_buffer_drop(self, tp: TP) -> None:
        """A partition paused since its agent's buffer filled (for a recovery, or until
        the seek) resumes with the others: Faust would take its records again now."""
        if tp in self._paused_partitions:
            self._buffered_partitions.discard(tp)
            return
        super().on_buffer_drop(tp)


class _Transport(driver.Transport):  # type: ignore[misc]
    Consumer = _Consumer


class App(faust.App):  # type: ignore[misc]
    offsets_in_transactions = False
    """Agents commit their input offsets in Kafka transactions (processors/transactions.py):
    Faust's consumer then reads committed messages only and commits nothing itself."""

    def _new_transport(self) -> TransportT:
        return _Transport(self.conf.broker_consumer, self)

"""Exactly once on Kafka: an event's outputs and its input offset in one transaction.

With `kafka.exactly_once` on, an agent hands `deliver` a function that publishes the
outputs it has computed for an event. It runs inside a Kafka transaction of the
event's input partition, together with the consumer group's offset past the event,
and commits; a failed attempt is abandoned (aborted) and the function run again, so
consumers that read committed messages see each output once, whatever crashes.
Faust's own offset commits are then left out (processors/faust_app.py).

One transactional producer per input partition (id `<group>-<topic>-<partition>`),
Kafka's original scheme for consume-transform-produce: the worker a partition moves to
fences off the previous owner's producer, so a stalled worker cannot commit work that
is another's now, and its open transaction is aborted at once. (aiokafka's offset
commits carry no group generation, which the newer one-producer scheme relies on.)
A fenced worker stops, to restart from what is committed: the partition is not its
own any more, and a new producer of its own would fence the rightful owner in turn.

Off (the embedded broker grants no producer ids), the shared publisher sends and Faust
commits the offsets afterwards: at least once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from aiokafka.errors import KafkaError, ProducerFenced
from aiokafka.structs import TopicPartition
from faust.types import TP

from producers.publisher import MAX_RETRY_SECONDS, KafkaPublisher

__all__ = ["Transactions", "WorkerFencedError"]

log = logging.getLogger(__name__)

Publish = Callable[[KafkaPublisher], Awaitable[object]]
"""Publishes an event's outputs through the publisher it is given; may run again."""


class WorkerFencedError(Exception):
    """Another worker took over a partition this one was still processing."""


class Transactions:
    def __init__(
        self,
        shared: KafkaPublisher,
        group_id: str,
        transactional: Callable[[str], KafkaPublisher] | None,
    ) -> None:
        """`transactional(id)`: a publisher with that transactional id; None: off."""
        self._shared = shared
        self._group_id = group_id
        self._transactional = transactional
        self._publishers: dict[TP, KafkaPublisher] = {}
        self.fenced: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        """Fails with WorkerFencedError when this worker has been fenced off."""

    @property
    def enabled(self) -> bool:
        return self._transactional is not None

    async def deliver(
        self, tp: TP, offset: int, outputs: Publish, state: Publish | None = None
    ) -> None:
        """Publish an event's outputs and then its `state` (what it changed in the
        tables: their changelogs, and the aggregate updates that go before them),
        through the shared publisher (Faust commits the offset later); or, when on,
        the state first and then the outputs with the offset in one transaction.

        The state stays out of the transaction: a transaction ends each partition it
        wrote with a marker that committed reads skip, and Faust's table recovery waits
        to read a changelog's last offset. Written first, the tables are never behind
        the committed offsets; a crash before the commit leaves them ahead, which the
        agents recognise when the event comes again, as after any crash."""
        if self._transactional is None:
            await outputs(self._shared)
            if state is not None:
                await state(self._shared)
            return
        if state is not None:
            await state(self._shared)
        offsets = {TopicPartition(tp.topic, tp.partition): offset + 1}
        delay = 0.1
        while True:
            try:
                publisher = await self._publisher(tp)
                await publisher.begin()
                await outputs(publisher)
                await publisher.commit(offsets, self._group_id)
                return
            except ProducerFenced:
                await self.drop([tp])
                error = WorkerFencedError(
                    f"another worker of {self._group_id} took over {tp.topic}[{tp.partition}]"
                )
                if not self.fenced.done():
                    self.fenced.set_exception(error)
                raise error from None
            except KafkaError as exc:
                # A new producer with the same id aborts what this one left open.
                await self.drop([tp])
                log.warning(
                    "transaction for %s[%d] failed (%s); retrying in %.1fs",
                    tp.topic,
                    tp.partition,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_SECONDS)
            except BaseException:
                await self.drop([tp])
                raise

    async def take_over(self, tps: Iterable[TP]) -> None:
        """Take over assigned input partitions now: starting a producer aborts what the
        previous owner left open, which holds up committed reads until it times out."""
        if self._transactional is None:
            return
        for tp in tps:
            try:
                await self._publisher(tp)
            except KafkaError as exc:
                log.warning("taking over %s[%d] failed (%s)", tp.topic, tp.partition, exc)

    async def drop(self, tps: Iterable[TP]) -> None:
        """Let go of partitions (revoked, or their producer failed)."""
        for tp in tps:
            publisher = self._publishers.pop(tp, None)
            if publisher is not None:
                try:
                    await publisher.stop()
                except KafkaError as exc:
                    log.warning("stopping the producer of %s failed: %s", tp, exc)

    async def stop(self) -> None:
        await self.drop(list(self._publishers))

    async def _publisher(self, tp: TP) -> KafkaPublisher:
        publisher = self._publishers.get(tp)
        if publisher is None:
            if self._transactional is None:
                raise RuntimeError("transactions are off")
            publisher = self._transactional(f"{self._group_id}-{tp.topic}-{tp.partition}")
            try:
                await publisher.start()
            except KafkaError:
                await publisher.stop()
                raise
            self._publishers[tp] = publisher
        return publisher

"""The Kafka publisher every component writes through.

It uses aiokafka's batch API: one `send()` per message tops out near 45k msgs/s
here, batches near 700k/s. Keys are partitioned with Kafka's default murmur2
partitioner, so a consumer that partitions by `order_id` agrees with us; it is
computed with numpy for a whole group of keys at once, since aiokafka's pure-Python
murmur2 per message cost more than building the batches.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import TopicPartition

from tillstream.settings import Compression

__all__ = ["Message", "KafkaPublisher", "partition_for", "partitions_for"]

MAX_MESSAGE_BYTES = 8 * 2**20
BATCH_BYTES = 2**20
MAX_RETRY_SECONDS = 5.0

log = logging.getLogger(__name__)
Header = tuple[str, bytes]


@dataclass(slots=True)
class Message:
    """Not frozen: a frozen dataclass takes three times as long to create, and the hot
    path creates one per row."""

    key: bytes
    value: bytes | None
    """None is a tombstone."""
    partition: int | None = None
    """None: chosen from the key."""

    def __reduce__(self) -> tuple[type[Message], tuple[bytes, bytes | None, int | None]]:
        """Unpickled with one call: the cleaning process sends hundreds of messages a chunk,
        and the default for a slotted dataclass took four times as long, holding the GIL."""
        return Message, (self.key, self.value, self.partition)


_MURMUR_SEED = np.uint32(0x9747B28C)
_MURMUR_M = np.uint32(0x5BD1E995)


def partitions_for(keys: Sequence[bytes], partitions: int) -> npt.NDArray[np.int64]:
    """Kafka's default partitioner (murmur2, positive) for many keys at once, as the Java
    client computes it for each: the keys are laid out as rows of little-endian 32-bit
    words and hashed a word column at a time, in uint32 arithmetic that wraps as Java's
    int does."""
    count = len(keys)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    lengths = np.fromiter(map(len, keys), dtype=np.int64, count=count)
    words = int(lengths.max()) // 4 + 1
    padded = np.zeros((count, words * 4), dtype=np.uint8)
    padded[np.arange(words * 4) < lengths[:, None]] = np.frombuffer(b"".join(keys), dtype=np.uint8)
    blocks = padded.view("<u4")
    full = lengths // 4
    h = _MURMUR_SEED ^ lengths.astype(np.uint32)
    for i in range(int(full.max())):
        k = blocks[:, i] * _MURMUR_M
        k = (k ^ (k >> np.uint32(24))) * _MURMUR_M
        h = np.where(i < full, (h * _MURMUR_M) ^ k, h)
    rows = np.arange(count)
    tail = full * 4
    extra = lengths % 4
    for offset in (2, 1):
        byte = padded[rows, tail + offset].astype(np.uint32) << np.uint32(8 * offset)
        h = np.where(extra > offset, h ^ byte, h)
    h = np.where(extra > 0, (h ^ padded[rows, tail].astype(np.uint32)) * _MURMUR_M, h)
    h = (h ^ (h >> np.uint32(13))) * _MURMUR_M
    h ^= h >> np.uint32(15)
    return (h & np.uint32(0x7FFFFFFF)).astype(np.int64) % partitions


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of one key; see `partitions_for`."""
    return int(partitions_for([key], partitions)[0])


class KafkaPublisher:
    """Publishes groups of messages and returns once the broker has them all."""

    def __init__(
        self,
        bootstrap_servers: str,
        client_id: str,
        *,
        idempotent: bool = False,
        transactional_id: str | None = None,
        security: Mapping[str, Any] | None = None,
        compression: Compression = "zstd",
    ) -> None:
        """`security`: TLS and SASL arguments, from `tillstream.kafka_security`.
        `transactional_id`: publish only inside `begin` ... `commit` (implies idempotent).
        `compression`: the codec of every batch (setting `kafka.compression`)."""
        self._transactional = transactional_id is not None
        self._producer = AIOKafkaProducer(
            **(security or {}),
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            acks="all",
            enable_idempotence=idempotent or self._transactional,
            transactional_id=transactional_id,
            max_request_size=MAX_MESSAGE_BYTES,
            max_batch_size=BATCH_BYTES,
            # Not LZ4: aiokafka fixes it at level 9, which compressed these messages 4.7x
            # slower than zstd at its level 3 does, and less tightly.
            compression_type=None if compression == "none" else compression,
            linger_ms=0,
        )
        self._partitions: dict[str, int] = {}

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def begin(self) -> None:
        await self._producer.begin_transaction()

    async def commit(self, offsets: Mapping[TopicPartition, int], group_id: str) -> None:
        """Commit the transaction, and with it the group's input `offsets` (the next to read)."""
        await self._producer.send_offsets_to_transaction(dict(offsets), group_id)
        await self._producer.commit_transaction()

    async def partition_count(self, topic: str) -> int:
        if topic not in self._partitions:
            self._partitions[topic] = len(await self._producer.partitions_for(topic))
        return self._partitions[topic]

    async def publish(
        self,
        topic: str,
        messages: Iterable[Message],
        headers: Sequence[Header] = (),
        *,
        exact_end_offset: bool = False,
    ) -> int:
        """Send every message; return how many, once all are acknowledged.

        While the broker is unreachable or busy this keeps trying, with capped
        backoff: the caller waits, which is the backpressure, and nothing it was
        asked to send is dropped. A group is sent again whole, so a retry can
        duplicate messages; every consumer downstream takes that in its stride.
        Inside a transaction it raises instead: the caller aborts and sends the whole
        transaction again (processors/transactions.py), so no copy is committed.

        `exact_end_offset`: for a topic whose end offset a reader relies on (a
        changelog: Faust's recovery reads it to its end offset), end each partition's
        messages with a batch of one. The embedded broker reports a partition's end
        offset as the base offset of its last batch plus one; that batch costs a
        second request cycle, so other topics go without it, and their end offsets
        on the embedded broker may read short by the last batch's records less one.
        """
        group = list(messages)
        delay = 0.1
        while True:
            try:
                return await self._publish_once(topic, group, headers, exact_end_offset)
            except KafkaError as exc:
                retriable = exc.retriable or isinstance(exc, KafkaTimeoutError)
                if self._transactional or not retriable:
                    raise
                log.warning("publishing to %s failed (%s); retrying in %.1fs", topic, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_SECONDS)

    async def _publish_once(
        self,
        topic: str,
        messages: list[Message],
        headers: Sequence[Header],
        exact_end_offset: bool,
    ) -> int:
        partitions = await self.partition_count(topic)
        unplaced = [message.key for message in messages if message.partition is None]
        computed = iter(partitions_for(unplaced, partitions).tolist())
        by_partition: dict[int, list[Message]] = defaultdict(list)
        for message in messages:
            partition = message.partition
            by_partition[next(computed) if partition is None else partition].append(message)
        deliveries: list[asyncio.Future[object]] = []
        for partition, group in by_partition.items():
            deliveries.extend(
                await self._send_partition(topic, partition, group, list(headers), exact_end_offset)
            )
        # Every outcome retrieved, so that a failure leaves no unread exception behind.
        for outcome in await asyncio.gather(*deliveries, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome
        return sum(len(group) for group in by_partition.values())

    async def _send_partition(
        self,
        topic: str,
        partition: int,
        group: list[Message],
        headers: list[Header],
        exact_end_offset: bool,
    ) -> list[asyncio.Future[object]]:
        """Send a partition's messages in as few batches as fit, and with
        `exact_end_offset` the last message in a batch of its own (see `publish`)."""
        producer = self._producer
        deliveries = []
        batch = producer.create_batch()
        for message in group[:-1] if exact_end_offset else group:
            if not _append(batch, message, headers):
                deliveries.append(await producer.send_batch(batch, topic, partition=partition))
                batch = self._batch_of(message, headers)
        if batch.record_count():
            deliveries.append(await producer.send_batch(batch, topic, partition=partition))
        if exact_end_offset:
            last = self._batch_of(group[-1], headers)
            deliveries.append(await producer.send_batch(last, topic, partition=partition))
        return deliveries

    def _batch_of(self, message: Message, headers: list[Header]) -> BatchBuilder:
        batch = self._producer.create_batch()
        if not _append(batch, message, headers):
            raise ValueError(f"message of {len(message.value or b'')} bytes exceeds the batch size")
        return batch


def _append(batch: BatchBuilder, message: Message, headers: list[Header]) -> bool:
    """False when the batch is full."""
    added = batch.append(key=message.key, value=message.value, timestamp=None, headers=headers)
    return added is not None

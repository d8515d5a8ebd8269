"""The worker's consumer: input partitions resume only once sought, uncommitted ones from
their first offset (the Apache Kafka runs of test_restarts.py show what it prevents), and
not earlier because their agent's buffer drained."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from faust.types import TP

from processors.faust_app import App


class ConsumerThreadRecord:
    """Stands in for Faust's consumer thread, the part that talks to Kafka: the
    committed offsets it finds, and what it was asked to rewind."""

    def __init__(self, committed: Mapping[TP, int | None]) -> None:
        self.committed = dict(committed)
        self.rewound: list[TP] = []

    def assignment(self) -> set[TP]:
        return set(self.committed)

    async def seek_to_committed(self) -> Mapping[TP, int | None]:
        return self.committed

    async def seek_to_beginning(self, *partitions: TP) -> None:
        self.rewound += partitions


def test_input_partitions_resume_after_the_seek_and_uncommitted_ones_from_the_start() -> None:
    async def scenario() -> None:
        app = App("t", broker="kafka://127.0.0.1:1", store="memory://")
        changelog = TP(app.Table("seen", key_type=str).changelog_topic.get_topic_name(), 0)
        committed, fresh = TP("sales.raw", 0), TP("sales.raw", 1)
        consumer = app.consumer
        thread = ConsumerThreadRecord({committed: 14, fresh: None, changelog: None})
        consumer._thread = thread
        consumer.pause_partitions({committed, fresh, changelog})

        consumer.resume_partitions({committed, fresh, changelog})
        assert consumer._paused_partitions == {committed, fresh}, "inputs wait for the seek"

        await consumer.perform_seek()
        assert consumer._paused_partitions == set()
        assert thread.rewound == [fresh], "only the input partition never committed"

    asyncio.run(scenario())


def test_a_drained_buffer_resumes_a_partition_only_if_nothing_else_paused_it() -> None:
    async def scenario() -> None:
        app = App("t", broker="kafka://127.0.0.1:1", store="memory://")
        running, recovering = TP("sales.raw", 0), TP("sales.raw", 1)
        consumer = app.consumer
        consumer._thread = ConsumerThreadRecord({running: 14, recovering: 3})
        consumer.on_buffer_full(running)
        consumer.on_buffer_full(recovering)
        assert consumer._get_active_partitions() == set()

        consumer.pause_partitions({recovering})
        consumer.on_buffer_drop(running)
        consumer.on_buffer_drop(recovering)
        assert consumer._get_active_partitions() == {running}, "paused until the seek"

        consumer.resume_partitions({recovering})
        await consumer.perform_seek()
        assert consumer._get_active_partitions() == {running, recovering}

    asyncio.run(scenario())

"""A Faust table whose changelog is published in batches.

Stock Faust sends one changelog message per key through its producer buffer,
which caps a table at a few thousand updates per second. Here an update only
records the changelog message; the agent publishes them all with the batch
publisher before its input offset is committed. The messages are the ones
Faust would have sent (same topic, partition, key and value codecs), so
recovery after a restart or a rebalance is Faust's own.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.serializers import codecs

from producers.publisher import Message

__all__ = ["BatchedChangelogTable"]


class BatchedChangelogTable(faust.Table):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: list[Message] = []

    @property
    def changelog_topic_name(self) -> str:
        return str(self.changelog_topic.get_topic_name())

    def on_key_set(self, key: Any, value: Any) -> None:
        self._record(key, codecs.dumps(self.value_serializer, value))
        self._sensor_on_set(self, key, value)

    def on_key_del(self, key: Any) -> None:
        self._record(key, None)
        self._sensor_on_del(self, key)

    def _record(self, key: Any, value: bytes | None) -> None:
        partition = self.partition_for_key(key)
        encoded_key = codecs.dumps(self.key_serializer, key)
        self._pending.append(Message(encoded_key, value, partition))

    def take_changelog(self) -> list[Message]:
        """The changelog messages of the updates since the last call."""
        pending, self._pending = self._pending, []
        return pending

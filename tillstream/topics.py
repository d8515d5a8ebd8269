"""Topic specs, and creating them idempotently at start-up."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from tillstream.kafka_security import client_options
from tillstream.settings import KafkaConfig

__all__ = ["TopicSpec", "Topics", "ensure_topics"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int
    compacted: bool = False
    """Keeps the latest value per key forever instead of everything for a while."""

    def new_topic(self, replication_factor: int) -> NewTopic:
        configs = (
            {"cleanup.policy": "compact"}
            if self.compacted
            else {"retention.ms": str(self.retention_ms)}
        )
        return NewTopic(
            name=self.name,
            num_partitions=self.partitions,
            replication_factor=replication_factor,
            topic_configs=configs,
        )


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics of the pipeline, named from the configured prefix."""

    raw: TopicSpec
    """Internal: chunks of rows with provenance, keyed by source id."""
    validated: TopicSpec
    """Internal: cleaned rows grouped by the partition of their order id, for dedupe."""
    clean: TopicSpec
    """Public: one clean sale per message, keyed by order id."""
    dlq: TopicSpec
    """Public: one quarantined row per message, keyed by dead-letter id."""
    duplicates: TopicSpec
    """Public: one dropped exact re-delivery per message, so every row is accounted for."""
    aggregates: TopicSpec
    """Public, compacted: the latest totals of one window, dimension value and partition."""
    anomalies: TopicSpec
    """Public: one revenue outlier per message, keyed by order id."""

    @classmethod
    def from_config(cls, config: KafkaConfig) -> Topics:
        retention_ms = config.retention_hours * 3_600_000

        def spec(name: str, compacted: bool = False) -> TopicSpec:
            return TopicSpec(
                f"{config.topic_prefix}{name}", config.partitions, retention_ms, compacted
            )

        return cls(
            raw=spec("sales.raw"),
            validated=spec("sales.validated"),
            clean=spec("sales.clean"),
            dlq=spec("sales.dlq"),
            duplicates=spec("sales.duplicates"),
            aggregates=spec("sales.aggregates", compacted=True),
            anomalies=spec("sales.anomalies"),
        )

    def all(self) -> list[TopicSpec]:
        return [
            self.raw,
            self.validated,
            self.clean,
            self.dlq,
            self.duplicates,
            self.aggregates,
            self.anomalies,
        ]


async def ensure_topics(
    bootstrap_servers: str, config: KafkaConfig, topics: Iterable[TopicSpec]
) -> None:
    """Create every topic that does not exist yet; existing ones are left as they are."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, client_id=config.client_id, **client_options(config)
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in topics if spec.name not in existing]
        for spec in missing:
            try:
                await admin.create_topics([spec.new_topic(config.replication_factor)])
            except TopicAlreadyExistsError:
                continue
            log.info("created topic %s partitions=%d", spec.name, spec.partitions)
    finally:
        await admin.close()

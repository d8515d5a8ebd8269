"""Workers as separate processes: they share partitions, and one dying loses nothing."""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from pathlib import Path

import pytest

from tests.integration.test_aggregates import assert_aggregates_match_sales
from tests.integration.test_end_to_end import assert_file_ends_at_truth, assert_matches_truth
from tests.kafka_reading import read_committed
from tests.pipeline import Pipeline
from tillstream.sample_data import generate_sales
from tillstream.settings import KafkaConfig

pytestmark = pytest.mark.integration

CLEANED = "tillstream_worker_rows_total"


def test_a_second_worker_shares_the_work_and_its_sigkill_loses_nothing(
    pipeline: Pipeline, tmp_path: Path, kafka_bootstrap: str
) -> None:
    if not kafka_bootstrap:
        pytest.skip(
            "SKIPPED LOUDLY: the embedded broker never rebalances a running consumer group, "
            "so a second worker gets no partitions; scale-out is tested with --broker apache"
        )
    source = tmp_path / "shared.csv"
    truth = generate_sales(source, 100_000, seed=41, order_id_prefix="W")
    pipeline.start()
    extra = pipeline.spawn("worker", "worker-2")
    shutil.copy(source, pipeline.inbox / source.name)

    # The extra worker got partitions and did part of the work: then it dies.
    pipeline.wait_for(
        lambda: extra.metric(CLEANED, stage="clean") > 0, 120, "the second worker to clean rows"
    )
    assert pipeline.status()[0]["status"] == "processing"
    extra.kill()

    assert_file_ends_at_truth(pipeline, source.name, truth)
    assert_aggregates_match_sales(pipeline)

    # Exactly once on the topics too: a consumer of committed messages sees each row
    # once, though the dead worker's unfinished chunks were processed again.
    partitions = KafkaConfig().partitions
    published = {
        topic: Counter(
            record.key
            for record in asyncio.run(
                read_committed(kafka_bootstrap, pipeline.topic_prefix + topic, partitions)
            )
        )
        for topic in ("sales.clean", "sales.dlq", "sales.duplicates")
    }
    assert len(published["sales.clean"]) == truth.valid
    assert len(published["sales.dlq"]) == sum(truth.rejected.values())
    assert len(published["sales.duplicates"]) == truth.duplicates
    repeated = {t: sum(keys.values()) - len(keys) for t, keys in published.items()}
    assert repeated == dict.fromkeys(published, 0)


def test_replaying_the_raw_topic_into_a_fresh_worker_group_adds_nothing(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    source = tmp_path / "replayed.csv"
    truth = generate_sales(source, 20_000, seed=42, order_id_prefix="R")
    pipeline.start()
    shutil.copy(source, pipeline.inbox / source.name)
    row = pipeline.wait_for_status(source.name, "done")

    replay = pipeline.spawn("worker", "replay", kafka__group_prefix="replay")
    pipeline.wait_for(
        lambda: replay.metric(CLEANED, stage="dedupe", outcome="clean") >= truth.valid,
        120,
        "the fresh worker group to re-emit every sale",
    )
    pipeline.wait_for(
        lambda: (
            pipeline.metric("tillstream_sink_rows_written_total", table="sales") >= 2 * truth.valid
        ),
        60,
        "the sink to write the re-emitted sales",
    )
    assert int(pipeline.scalar("SELECT count() FROM tillstream.sales FINAL")) == truth.valid
    assert_matches_truth(pipeline, row["source_id"], truth)
    assert_aggregates_match_sales(pipeline)
    # A new group whose changelog topics appeared after its first metadata crashed its
    # dedupe agent on every event (PartitionsMismatch) until the metadata was refreshed.
    crashes = [line for line in replay.log_file.read_text().splitlines() if "Crashed" in line]
    assert not crashes, crashes[:3]

"""Faults of the world around tillstream: it waits them out and loses nothing."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_end_to_end import assert_file_ends_at_truth
from tests.pipeline import Pipeline
from tests.services.apache_kafka import ApacheKafka
from tillstream.sample_data import generate_sales

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = 30


@pytest.fixture
def own_kafka(kafka_bootstrap: str) -> Iterator[ApacheKafka]:
    """A broker of this test's own, since the test stops it."""
    if not kafka_bootstrap:
        pytest.skip(
            "SKIPPED LOUDLY: the embedded broker keeps topics in memory, so stopping it is a "
            "restart of `up` (tested in test_restarts.py); a broker outage is tested with "
            "--broker apache"
        )
    kafka = ApacheKafka()
    kafka.start()
    yield kafka
    kafka.close()


def test_a_kafka_outage_mid_stream_is_waited_out_without_loss(
    own_kafka: ApacheKafka, tmp_path: Path
) -> None:
    source = tmp_path / "during-outage.csv"
    truth = generate_sales(source, 60_000, seed=51, order_id_prefix="K")
    pipeline = Pipeline(
        tmp_path / "run", {"kafka": {"bootstrap_servers": own_kafka.bootstrap_servers}}
    )
    try:
        pipeline.start()
        shutil.copy(source, pipeline.inbox / source.name)
        pipeline.wait_for(
            lambda: int(pipeline.scalar("SELECT count() FROM tillstream.sales")) > 1_000,
            120,
            "the first sales to be written",
        )
        own_kafka.kill()
        time.sleep(OUTAGE_SECONDS)  # the outage itself: nothing to wait for but the clock
        assert pipeline.health()["ok"], "tillstream must outlive a broker outage"
        own_kafka.start()

        assert_file_ends_at_truth(pipeline, source.name, truth)
        assert pipeline.stop() == 0
    finally:
        pipeline.close()

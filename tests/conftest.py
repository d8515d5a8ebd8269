"""Shared fixtures: which broker the integration tests run against.

`--broker embedded` (the default) lets each `tillstream up` start its own
embedded broker; `--broker apache` starts one Apache Kafka for the session and
gives every test its own topics and consumer groups on it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.pipeline import Pipeline
from tests.services.apache_kafka import ApacheKafka


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--broker",
        choices=["embedded", "apache"],
        default=os.environ.get("TILLSTREAM_TEST_BROKER", "embedded"),
        help="the Kafka broker integration tests run against",
    )


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest) -> Iterator[str]:
    """The external bootstrap servers, or "" to let each pipeline embed its broker."""
    if request.config.getoption("--broker") == "embedded":
        yield ""
        return
    kafka = ApacheKafka()
    kafka.start()
    try:
        yield kafka.bootstrap_servers
    finally:
        kafka.close()


@pytest.fixture
def make_pipeline(tmp_path: Path, kafka_bootstrap: str) -> Iterator[Callable[..., Pipeline]]:
    """Pipelines with their own folders and, on a shared broker, their own topics."""
    made: list[Pipeline] = []

    def make(name: str = "run", config: dict[str, Any] | None = None) -> Pipeline:
        settings = dict(config or {})
        if kafka_bootstrap:
            namespace = f"t{uuid.uuid4().hex[:8]}"
            settings["kafka"] = {
                **settings.get("kafka", {}),
                "bootstrap_servers": kafka_bootstrap,
                "topic_prefix": f"{namespace}.",
                "group_prefix": namespace,
            }
        pipeline = Pipeline(tmp_path / name, settings)
        made.append(pipeline)
        return pipeline

    yield make
    for pipeline in made:
        pipeline.close()


@pytest.fixture
def pipeline(make_pipeline: Callable[..., Pipeline]) -> Pipeline:
    return make_pipeline()

"""Kafka with SASL (PLAIN, SCRAM-SHA-256/512) over plain TCP and over TLS, and
secrets that never show.

Apache Kafka is started with a SASL_PLAINTEXT or a SASL_SSL listener (its certificate
signed by a CA made for the test) and SCRAM users written at format time
(`kafka-storage format --add-scram`); the pipeline talks to it through that listener.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaClient
from aiokafka.errors import KafkaError

from tests.integration.test_end_to_end import assert_file_ends_at_truth
from tests.pipeline import Pipeline
from tests.services.apache_kafka import ApacheKafka
from tillstream.kafka_security import client_options
from tillstream.sample_data import generate_sales
from tillstream.settings import KafkaConfig

pytestmark = pytest.mark.integration

USER = "tillstream-app"
PASSWORD, CLICKHOUSE_PASSWORD, WEBHOOK_TOKEN = (secrets.token_hex(12) for _ in range(3))
"""Fresh each run, and unlike anything else a log holds."""


@pytest.fixture(scope="module", params=["SASL_PLAINTEXT", "SASL_SSL"])
def sasl_kafka(request: pytest.FixtureRequest) -> Iterator[ApacheKafka]:
    if request.config.getoption("--broker") != "apache":
        pytest.skip(
            "SKIPPED LOUDLY: SASL needs Apache Kafka (the embedded broker speaks PLAINTEXT "
            "only); run with --broker apache"
        )
    kafka = ApacheKafka(sasl_users={USER: PASSWORD}, tls=request.param == "SASL_SSL")
    kafka.start()
    yield kafka
    kafka.close()


def security(kafka: ApacheKafka, mechanism: str) -> dict[str, str]:
    """The `kafka` settings of a client of this broker, but the password."""
    tls = kafka.sasl_protocol == "SASL_SSL"
    return {
        "security_protocol": kafka.sasl_protocol,
        "sasl_mechanism": mechanism,
        "sasl_username": USER,
        **({"ssl_cafile": str(kafka.ca_file)} if tls else {}),
    }


async def _bootstrap(bootstrap_servers: str, config: KafkaConfig) -> None:
    client = AIOKafkaClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=5000, **client_options(config)
    )
    try:
        await client.bootstrap()
    finally:
        await client.close()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_each_sasl_mechanism_authenticates_and_a_wrong_password_is_refused(
    sasl_kafka: ApacheKafka, mechanism: str
) -> None:
    def config(password: str) -> KafkaConfig:
        return KafkaConfig.model_validate(
            {**security(sasl_kafka, mechanism), "sasl_password": password}
        )

    asyncio.run(_bootstrap(sasl_kafka.sasl_bootstrap_servers, config(PASSWORD)))
    with pytest.raises(KafkaError):
        asyncio.run(_bootstrap(sasl_kafka.sasl_bootstrap_servers, config("wrong")))


def test_a_pipeline_on_sasl_scram_lands_its_file_and_shows_no_secret(
    sasl_kafka: ApacheKafka, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_file = tmp_path / "kafka-password"
    secret_file.write_text(PASSWORD + "\n", encoding="utf-8")
    monkeypatch.setenv("TILLSTREAM_CLICKHOUSE__PASSWORD", CLICKHOUSE_PASSWORD)
    pipeline = Pipeline(
        tmp_path / "run",
        {
            "kafka": {
                "bootstrap_servers": sasl_kafka.sasl_bootstrap_servers,
                **security(sasl_kafka, "SCRAM-SHA-512"),
                "sasl_password_file": str(secret_file),
                "topic_prefix": "sec.",
                "group_prefix": "sec",
            },
            "notify": {"webhook_url": f"http://127.0.0.1:9/hook/{WEBHOOK_TOKEN}", "attempts": 2},
            "log_level": "debug",
        },
    )
    source = tmp_path / "secure.csv"
    truth = generate_sales(source, 5_000, seed=95, order_id_prefix="S")
    try:
        pipeline.start()
        shutil.copy(source, pipeline.inbox / source.name)
        assert_file_ends_at_truth(pipeline, source.name, truth)
        pipeline.wait_for(
            lambda: pipeline.metric("tillstream_notifier_notices_total", outcome="retried") > 0,
            30,
            "a notice to be tried",
        )
        seen = [
            pipeline.log_file.read_text(errors="replace"),
            *(
                urllib.request.urlopen(f"{pipeline.api_url}{path}", timeout=10).read().decode()
                for path in ("/metrics", "/health", "/api/status")
            ),
            *(
                subprocess.run(
                    pipeline.command(*command), capture_output=True, text=True, check=True
                ).stdout
                for command in (["status"], ["status", "--json"], ["quarantine", "stats"])
            ),
        ]
        assert pipeline.stop() == 0
        seen.append(pipeline.log_file.read_text(errors="replace"))
    finally:
        pipeline.close()
    assert "SASL" in seen[0] or sasl_kafka.sasl_bootstrap_servers in seen[0]
    for secret in (PASSWORD, CLICKHOUSE_PASSWORD, WEBHOOK_TOKEN):
        leaks = [text for text in seen if secret in text]
        assert not leaks, f"{secret} shows in {len(leaks)} outputs"

"""The dependency probe reports a dependency that does not answer as down."""

from __future__ import annotations

import socket

from prometheus_client import REGISTRY

from tillstream.probes import DependencyProbe


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unreachable_kafka_is_reported_down() -> None:
    probe = DependencyProbe(f"127.0.0.1:{_closed_port()}", None, "group", ["sales.raw"])
    try:
        await probe.probe()
    finally:
        await probe.stop()
    value = REGISTRY.get_sample_value("tillstream_runtime_dependency_up", {"dependency": "kafka"})
    assert value == 0

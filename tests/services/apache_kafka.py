"""A real single-node Apache Kafka broker (KRaft) on loopback, for tests and benchmarks.

The embedded broker refuses idempotent producers and transactions, and the distributed
deployment runs Apache Kafka, so whatever depends on either is tested against this one.
Only Maven Central is reachable here, so the broker runs from jars that
infra/kafka/fetch-jars.sh copies into a cache folder, not from a release tarball.

``python -m tests.services.apache_kafka`` starts one and keeps it running until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType, TracebackType

from aiokafka import AIOKafkaClient
from aiokafka.errors import KafkaError

__all__ = ["ApacheKafka", "ApacheKafkaError", "kafka_jars"]

INFRA_DIR = Path(__file__).resolve().parents[2] / "infra" / "kafka"
_PORT_TAKEN = "Address already in use"
_START_ATTEMPTS = 3
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class ApacheKafkaError(RuntimeError):
    """The broker could not be fetched, formatted or started."""


@functools.cache
def kafka_jars() -> Path:
    """Return the folder of broker jars, fetching them on the first call of a process."""
    script = INFRA_DIR / "fetch-jars.sh"
    result = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, check=False, timeout=600
    )
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        raise ApacheKafkaError(lines[-1] if lines else f"{script} exited with {result.returncode}")
    return Path(result.stdout.strip().splitlines()[-1])


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home, "bin", "java") if java_home else None
    if candidate is not None and candidate.is_file():
        return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise ApacheKafkaError("Apache Kafka needs a Java 17+ runtime: no `java` on PATH")
    return found


def _free_ports(count: int) -> list[int]:
    """Ports the kernel just handed out; held together so that they differ."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _cluster_id() -> str:
    """A cluster id as Kafka's ``Uuid`` makes it, without starting a JVM for it."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class ApacheKafka:
    """One combined broker and controller, its data and log in a work dir.

    Ports are chosen at the first start and kept, so a broker that was killed, stopped
    or paused comes back at the same address with its data (fault tests rely on it).
    """

    def __init__(
        self,
        work_dir: Path | None = None,
        *,
        port: int | None = None,
        log_level: str = "WARN",
        heap: str = "512m",
        start_timeout: float = 60.0,
        sasl_users: dict[str, str] | None = None,
        tls: bool = False,
    ) -> None:
        """`sasl_users` (name -> password) adds a SASL listener that takes them with
        PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 (`sasl_bootstrap_servers`); with `tls`
        it is SASL_SSL, its certificate signed by a CA of its own (`ca_file`)."""
        self._owns_work_dir = work_dir is None
        self.work_dir = (
            Path(tempfile.mkdtemp(prefix="tillstream-kafka-")) if work_dir is None else work_dir
        )
        self._fixed_port = port
        self._port = port
        self._controller_port: int | None = None
        self._sasl_port: int | None = None
        self._sasl_users = dict(sasl_users or {})
        self._sasl_protocol = "SASL_SSL" if tls else "SASL_PLAINTEXT"
        self._log_level = log_level
        self._heap = heap
        self._start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._paused = False

    @property
    def port(self) -> int:
        if self._port is None:
            raise ApacheKafkaError("the broker has no address before its first start()")
        return self._port

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_bootstrap_servers(self) -> str:
        if self._sasl_port is None:
            raise ApacheKafkaError("the broker has no SASL listener (no sasl_users)")
        return f"127.0.0.1:{self._sasl_port}"

    @property
    def sasl_protocol(self) -> str:
        """`SASL_SSL` or `SASL_PLAINTEXT`: what a client of `sasl_bootstrap_servers` uses."""
        return self._sasl_protocol

    @property
    def ca_file(self) -> Path:
        return self.work_dir / "tls" / "ca.crt"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "broker.log"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def rss_bytes(self) -> int:
        """Resident memory of the JVM, for benchmarks that report it."""
        process = self._process
        if process is None or process.poll() is not None:
            raise ApacheKafkaError("the broker is not running")
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise ApacheKafkaError("VmRSS missing from /proc status")

    def start(self) -> None:
        """Start the broker and return once it answers metadata requests."""
        if self.running:
            raise ApacheKafkaError(f"the broker is already running (pid {self.pid})")
        jars = kafka_jars()
        java = _java()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self._start_timeout
        for attempt in range(1, _START_ATTEMPTS + 1):
            if self._port is None or self._controller_port is None:
                self._choose_ports()
            config = self._write_config()
            self._format_storage(java, jars, config)
            self._launch(java, jars, config)
            try:
                self._wait_until_ready(deadline)
            except ApacheKafkaError:
                self.kill()
                if self._fixed_port is None and attempt < _START_ATTEMPTS and self._port_taken():
                    self._port = self._controller_port = None
                    continue
                raise
            except BaseException:
                self.kill()
                raise
            return

    def stop(self, timeout: float = 20.0) -> int | None:
        """Shut down cleanly (SIGTERM), SIGKILL after ``timeout``; return the exit code."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            self.resume()
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
        return self._reap()

    def kill(self) -> int | None:
        """SIGKILL the JVM, as a crash would; the data stays for the next start()."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.kill()
        return self._reap()

    def pause(self) -> None:
        """Freeze the JVM (SIGSTOP): clients see a broker that hangs, not one that is gone."""
        if self._process is not None and not self._paused:
            os.kill(self._process.pid, signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        if self._process is not None and self._paused:
            os.kill(self._process.pid, signal.SIGCONT)
            self._paused = False

    def wait(self, timeout: float | None = None) -> int:
        """Block until the JVM exits by itself and return its exit code."""
        if self._process is None:
            raise ApacheKafkaError("the broker was never started")
        return self._process.wait(timeout)

    def close(self) -> None:
        """Stop the broker and delete the work dir if this object created it."""
        self.stop()
        if self._owns_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines the current (or last) JVM wrote, for error messages."""
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            text = log.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> ApacheKafka:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> ApacheKafka:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.close)

    def _choose_ports(self) -> None:
        if self._fixed_port is None:
            self._port, self._controller_port, self._sasl_port = _free_ports(3)
        else:
            self._port = self._fixed_port
            self._controller_port, self._sasl_port = _free_ports(2)
        if not self._sasl_users:
            self._sasl_port = None

    def _write_config(self) -> Path:
        controller = f"127.0.0.1:{self._controller_port}"
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            # Static voters: the storage is then formatted without --standalone, which
            # Kafka 4.1 only accepts for a dynamic quorum (controller.quorum.bootstrap.servers).
            "controller.quorum.voters": f"1@{controller}",
            "listeners": f"PLAINTEXT://{self.bootstrap_servers},CONTROLLER://{controller}",
            "advertised.listeners": f"PLAINTEXT://{self.bootstrap_servers}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.work_dir / "data"),
            "num.partitions": "4",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # A broker restarted after kill() is refused as a duplicate until its old
            # session expires (9 s by default); fault tests restart it often.
            "broker.heartbeat.interval.ms": "500",
            "broker.session.timeout.ms": "3000",
        }
        if self._sasl_users:
            settings |= self._sasl_settings()
        config = self.work_dir / "server.properties"
        config.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
        return config

    def _sasl_settings(self) -> dict[str, str]:
        plain_users = " ".join(
            f'user_{name}="{password}"' for name, password in self._sasl_users.items()
        )
        protocol = self._sasl_protocol
        sasl = f"{protocol}://{self.sasl_bootstrap_servers}"
        return {
            "listeners": f"PLAINTEXT://{self.bootstrap_servers},{sasl},"
            f"CONTROLLER://127.0.0.1:{self._controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.bootstrap_servers},{sasl}",
            "listener.security.protocol.map": (
                f"PLAINTEXT:PLAINTEXT,{protocol}:{protocol},CONTROLLER:PLAINTEXT"
            ),
            "sasl.enabled.mechanisms": ",".join(_SASL_MECHANISMS),
            f"listener.name.{protocol.lower()}.plain.sasl.jaas.config": (
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain_users};"
            ),
            **{
                f"listener.name.{protocol.lower()}.{mechanism.lower()}.sasl.jaas.config": (
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                )
                for mechanism in _SASL_MECHANISMS[1:]
            },
            **(self._tls_settings() if protocol == "SASL_SSL" else {}),
        }

    def _tls_settings(self) -> dict[str, str]:
        """A CA and a certificate for 127.0.0.1 it signed, made with openssl once."""
        folder = self.ca_file.parent
        keystore = folder / "broker.pem"
        if not keystore.exists():
            folder.mkdir(parents=True, exist_ok=True)
            for command in (
                "req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=tillstream-test-ca "
                "-keyout ca.key -out ca.crt",
                "genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out broker.key",
                "req -new -key broker.key -subj /CN=127.0.0.1 -out broker.csr",
                "x509 -req -in broker.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 "
                "-extfile san.ext -out broker.crt",
            ):
                (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
                result = subprocess.run(
                    ["openssl", *command.split()], cwd=folder, capture_output=True, text=True
                )
                if result.returncode != 0:
                    raise ApacheKafkaError(f"openssl {command.split()[0]} failed: {result.stderr}")
            keystore.write_text(
                "".join((folder / name).read_text() for name in ("broker.key", "broker.crt"))
            )
        return {"ssl.keystore.type": "PEM", "ssl.keystore.location": str(keystore)}

    def _java_command(
        self, java: str, jars: Path, main: list[str], options: tuple[str, ...] = ()
    ) -> list[str]:
        return [
            java,
            *options,
            f"-Dlog4j2.configurationFile={INFRA_DIR / 'log4j2.properties'}",
            f"-Dtillstream.kafka.log.level={self._log_level}",
            "-cp",
            f"{jars}/*",
            *main,
        ]

    def _format_storage(self, java: str, jars: Path, config: Path) -> None:
        if (self.work_dir / "data" / "meta.properties").exists():
            return
        command = self._java_command(
            java,
            jars,
            [
                "kafka.tools.StorageTool",
                "format",
                "--cluster-id",
                _cluster_id(),
                "-c",
                str(config),
                *(
                    argument
                    for name, password in self._sasl_users.items()
                    for mechanism in _SASL_MECHANISMS[1:]
                    for argument in (
                        "--add-scram",
                        f"{mechanism}=[name={name},password={password}]",
                    )
                ),
            ],
        )
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()
            raise ApacheKafkaError(f"formatting the broker's storage failed:\n{output}")

    def _launch(self, java: str, jars: Path, config: Path) -> None:
        command = self._java_command(
            java, jars, ["kafka.Kafka", str(config)], options=("-Xms256m", f"-Xmx{self._heap}")
        )
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            # A session of its own keeps a terminal's Ctrl-C away from the JVM: the
            # owner decides how it stops.
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.work_dir,
                start_new_session=True,
            )
        self._paused = False
        atexit.register(self.kill)

    def _wait_until_ready(self, deadline: float) -> None:
        while not self._port_open():
            self._check_alive()
            if time.monotonic() > deadline:
                raise self._timeout_error()
            time.sleep(0.05)
        # The listener opens late in start-up, but the broker may still be fenced; a
        # metadata answer that lists it means clients can use it. aiokafka needs a loop
        # of its own: the caller may be inside one already.
        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(asyncio.run, self._await_metadata(deadline)).result()

    def _port_open(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    async def _await_metadata(self, deadline: float) -> None:
        while True:
            self._check_alive()
            client = AIOKafkaClient(
                bootstrap_servers=self.bootstrap_servers, request_timeout_ms=5000
            )
            try:
                await client.bootstrap()
                if client.cluster.brokers():
                    return
            except KafkaError:
                pass
            finally:
                await client.close()
            if time.monotonic() > deadline:
                raise self._timeout_error()
            await asyncio.sleep(0.1)

    def _check_alive(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        code = None if self._process is None else self._process.returncode
        raise ApacheKafkaError(
            f"Apache Kafka exited with code {code} while starting; "
            f"{self.log_path} ends with:\n{self.log_tail()}"
        )

    def _timeout_error(self) -> ApacheKafkaError:
        return ApacheKafkaError(
            f"Apache Kafka did not answer a metadata request on {self.bootstrap_servers} "
            f"within {self._start_timeout:.0f} s; {self.log_path} ends with:\n{self.log_tail()}"
        )

    def _port_taken(self) -> bool:
        return _PORT_TAKEN in self.log_tail(lines=400)

    def _reap(self) -> int | None:
        if self._process is None:
            return None
        code = self._process.wait()
        self._paused = False
        atexit.unregister(self.kill)
        return code


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run a broker for manual checks and benchmarks until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.services.apache_kafka",
        description="Run a single-node Apache Kafka broker on 127.0.0.1 until Ctrl-C.",
    )
    parser.add_argument("--port", type=int, help="broker port (default: a free one)")
    parser.add_argument("--work-dir", type=Path, help="keep data and log here (default: temp)")
    parser.add_argument("--log-level", default="WARN", help="broker log level (default: WARN)")
    parser.add_argument("--heap", default="512m", help="JVM -Xmx, at least 256m (default: 512m)")
    args = parser.parse_args(argv)

    signal.signal(signal.SIGTERM, _interrupt)
    kafka = ApacheKafka(args.work_dir, port=args.port, log_level=args.log_level, heap=args.heap)
    started = time.monotonic()
    try:
        with kafka:
            print(f"bootstrap={kafka.bootstrap_servers}", flush=True)
            print(
                f"started in {time.monotonic() - started:.1f} s, pid {kafka.pid}, "
                f"log {kafka.log_path}; Ctrl-C stops it",
                file=sys.stderr,
                flush=True,
            )
            code = kafka.wait()
    except KeyboardInterrupt:
        return 0
    except ApacheKafkaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"error: the broker exited by itself with code {code}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

"""`tillstream` processes, run as a user runs them, for integration tests.

The product runs in its own processes (chDB allows one data directory per
process); the test reads results through the HTTP API of `up`, the same
route `tillstream status` takes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tillstream.http_api import read_api_url

T = TypeVar("T")


class PipelineError(AssertionError):
    pass


def wait_for(
    probe: Callable[[], T | None], timeout: float, what: str, context: Callable[[], str] = str
) -> T:
    """Poll `probe` until it returns something truthy; fail with `context()` appended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    raise PipelineError(f"timed out after {timeout}s waiting for {what}\n{context()}")


class TillstreamProcess:
    """One `tillstream <command>` process with its own data directory and log."""

    def __init__(
        self, command: list[str], root: Path, data_dir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = command[-1]
        self._command = command
        self._root = root
        self.data_dir = data_dir
        self._env = env or {}
        self.log_file = root / f"{data_dir.name}.{self.name}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.api_url = ""

    def start(self, timeout: float = 90) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self._env}
        with open(self.log_file, "ab") as log:
            self._process = subprocess.Popen(
                self._command, stdout=log, stderr=subprocess.STDOUT, cwd=self._root, env=env
            )
        self.api_url = wait_for(
            self._healthy_url, timeout, f"tillstream {self.name} to be healthy", self.log_tail
        )

    def _healthy_url(self) -> str | None:
        if self._process is not None and self._process.poll() is not None:
            raise PipelineError(
                f"tillstream {self.name} exited with {self._process.returncode}\n{self.log_tail()}"
            )
        url = read_api_url(self.data_dir)
        if url is None:
            return None
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                return url if json.load(response)["ok"] else None
        except (urllib.error.URLError, OSError):
            return None

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.api_url}/health", timeout=10) as response:
            health: dict[str, Any] = json.load(response)
            return health

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples that carry these labels."""
        with urllib.request.urlopen(f"{self.api_url}/metrics", timeout=10) as response:
            text = response.read().decode()
        total = 0.0
        for line in text.splitlines():
            match = re.match(rf"^{re.escape(name)}(?:{{(.*)}})? (\S+)$", line)
            if match and all(
                f'{key}="{value}"' in (match[1] or "") for key, value in labels.items()
            ):
                total += float(match[2])
        return total

    def rss_bytes(self) -> int:
        """Resident memory of the process now (Linux)."""
        status = Path(f"/proc/{self._require_process().pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)[1]) * 1024  # type: ignore[index]

    def stop(self, timeout: float = 60) -> int:
        """Ctrl-C, as a user would; returns the exit code."""
        process = self._require_process()
        process.send_signal(signal.SIGINT)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            raise PipelineError(
                f"tillstream {self.name} did not stop within {timeout}s\n{self.log_tail()}"
            ) from None

    def kill(self) -> None:
        process = self._require_process()
        process.kill()
        process.wait(30)

    def close(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(30)

    def _require_process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise PipelineError("not started")
        return self._process

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])


class Pipeline(TillstreamProcess):
    """`tillstream up` with its own folders, plus extra components on the same broker."""

    def __init__(self, root: Path, config: dict[str, Any] | None = None) -> None:
        self.root = root
        self.inbox = root / "inbox"
        self.archive = root / "archive"
        self.failed = root / "failed"
        settings: dict[str, Any] = {
            "data_dir": str(root / "data"),
            "watch": {
                "inbox": str(self.inbox),
                "archive": str(self.archive),
                "failed": str(self.failed),
                "stable_seconds": 0.3,
            },
            "sink": {"batch_seconds": 0.2},
            "metrics": {"port": 0},
        }
        for key, value in (config or {}).items():
            if isinstance(value, dict):
                settings[key] = {**settings.get(key, {}), **value}
            else:
                settings[key] = value
        self.topic_prefix: str = settings.get("kafka", {}).get("topic_prefix", "")
        root.mkdir(parents=True, exist_ok=True)
        self.config_file = root / "tillstream.yaml"
        self.config_file.write_text(yaml.safe_dump(settings), encoding="utf-8")
        self.inbox.mkdir(parents=True, exist_ok=True)
        self._components: list[TillstreamProcess] = []
        super().__init__(self.command("up"), root, root / "data")

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "tillstream", "--config", str(self.config_file), *args]

    def spawn(self, component: str, name: str, **settings: str) -> TillstreamProcess:
        """Another component on this pipeline's broker and settings, with its own data
        directory; `settings` are extra environment overrides (`kafka__group_prefix=...`)."""
        env = {
            "TILLSTREAM_KAFKA__BOOTSTRAP_SERVERS": self.health()["kafka"],
            "TILLSTREAM_DATA_DIR": str(self.root / name),
            **{f"TILLSTREAM_{key.upper()}": value for key, value in settings.items()},
        }
        process = TillstreamProcess(self.command(component), self.root, self.root / name, env)
        self._components.append(process)
        process.start()
        return process

    def close(self) -> None:
        for component in self._components:
            component.close()
        super().close()

    def query(self, sql: str) -> list[list[Any]]:
        request = urllib.request.Request(
            f"{self.api_url}/api/query", data=sql.encode(), method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                rows: list[list[Any]] = json.load(response)["rows"]
                return rows
        except urllib.error.HTTPError as exc:
            raise PipelineError(f"query failed: {exc.read().decode()}\n{sql}") from None

    def scalar(self, sql: str) -> Any:
        return self.query(sql)[0][0]

    def late_sales_reconciled(self) -> bool:
        """Whether the last late-sales reconciliation started after the last rows of
        `sales` were written: every late sale is then in the aggregates."""
        return bool(
            self.scalar(
                "SELECT (SELECT max(upto) FROM tillstream.late_reconciliations) >= "
                "(SELECT max(_block_number) FROM tillstream.sales)"
            )
        )

    def status(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(
            f"{self.api_url}/api/status?limit=1000", timeout=30
        ) as response:
            rows: list[dict[str, Any]] = json.load(response)
            return rows

    def wait_for(self, probe: Callable[[], T | None], timeout: float, what: str) -> T:
        return wait_for(probe, timeout, what, self.log_tail)

    def wait_for_status(self, name: str, status: str, timeout: float = 120) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            for row in self.status():
                if Path(row["source_name"]).name == name and row["status"] == status:
                    return row
            return None

        return self.wait_for(probe, timeout, f"{name} to be {status}")

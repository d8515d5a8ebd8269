"""A `tillstream up` process, run as a user runs it, for integration tests.

The product runs in its own process (chDB allows one data directory per
process); the test reads results through the process's HTTP API, the same
route `tillstream status` takes.
"""

from __future__ import annotations

import json
import os
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

REPO = Path(__file__).resolve().parents[1]


class PipelineError(AssertionError):
    pass


class Pipeline:
    def __init__(self, root: Path, config: dict[str, Any] | None = None) -> None:
        self.root = root
        self.inbox = root / "inbox"
        self.archive = root / "archive"
        self.failed = root / "failed"
        self.data_dir = root / "data"
        self.log_file = root / "tillstream.log"
        settings: dict[str, Any] = {
            "data_dir": str(self.data_dir),
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
        root.mkdir(parents=True, exist_ok=True)
        self.config_file = root / "tillstream.yaml"
        self.config_file.write_text(yaml.safe_dump(settings), encoding="utf-8")
        self.inbox.mkdir(parents=True, exist_ok=True)
        self._process: subprocess.Popen[bytes] | None = None
        self.api_url = ""

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "tillstream", "--config", str(self.config_file), *args]

    def start(self, timeout: float = 90) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log_file, "ab") as log:
            self._process = subprocess.Popen(
                self.command("up"), stdout=log, stderr=subprocess.STDOUT, cwd=self.root, env=env
            )
        self.api_url = self.wait_for(self._healthy_url, timeout, "tillstream up to be healthy")

    def _healthy_url(self) -> str | None:
        if self._process is not None and self._process.poll() is not None:
            raise PipelineError(
                f"tillstream up exited with {self._process.returncode}\n{self.log_tail()}"
            )
        url = read_api_url(self.data_dir)
        if url is None:
            return None
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:  # noqa: S310
                return url if json.load(response)["ok"] else None
        except (urllib.error.URLError, OSError):
            return None

    def stop(self, timeout: float = 60) -> int:
        """Ctrl-C, as a user would; returns the exit code."""
        process = self._require_process()
        process.send_signal(signal.SIGINT)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            raise PipelineError(
                f"tillstream up did not stop within {timeout}s\n{self.log_tail()}"
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

    def query(self, sql: str) -> list[list[Any]]:
        request = urllib.request.Request(
            f"{self.api_url}/api/query", data=sql.encode(), method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                rows: list[list[Any]] = json.load(response)["rows"]
                return rows
        except urllib.error.HTTPError as exc:
            raise PipelineError(f"query failed: {exc.read().decode()}\n{sql}") from None

    def scalar(self, sql: str) -> Any:
        return self.query(sql)[0][0]

    def status(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(
            f"{self.api_url}/api/status?limit=1000", timeout=30
        ) as response:  # noqa: S310
            rows: list[dict[str, Any]] = json.load(response)
            return rows

    def wait_for(self, probe: Callable[[], T | None], timeout: float, what: str) -> T:
        """Poll `probe` until it returns something truthy; fail with the log tail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = probe()
            if value:
                return value
            time.sleep(0.1)
        raise PipelineError(f"timed out after {timeout}s waiting for {what}\n{self.log_tail()}")

    def wait_for_status(self, name: str, status: str, timeout: float = 120) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            for row in self.status():
                if Path(row["source_name"]).name == name and row["status"] == status:
                    return row
            return None

        return self.wait_for(probe, timeout, f"{name} to be {status}")

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

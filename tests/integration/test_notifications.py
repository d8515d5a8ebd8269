"""Notices of done and failed files reach a webhook and a mailbox; a dead notifier slows nothing."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable, Iterator
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.pipeline import Pipeline
from tillstream.broker import free_port
from tillstream.sample_data import generate_sales

pytestmark = [pytest.mark.integration, pytest.mark.broker_independent]


class Inbox:
    """What the local webhook and SMTP server received."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.mails: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's hook name
        self.mails.append(message_from_bytes(envelope.content, policy=policy.default))
        return "250 OK"


@pytest.fixture
def receivers() -> Iterator[tuple[Inbox, str, int]]:
    inbox = Inbox()

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's hook name
            length = int(self.headers["Content-Length"])
            inbox.posts.append(json.loads(self.rfile.read(length)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    web = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    yield inbox, f"http://127.0.0.1:{web.server_address[1]}/hook", smtp.port
    smtp.stop()
    web.shutdown()


def test_done_failed_and_high_quarantine_rate_are_posted_and_mailed(
    make_pipeline: Callable[..., Pipeline],
    receivers: tuple[Inbox, str, int],
    tmp_path: Path,
) -> None:
    inbox, hook, smtp_port = receivers
    pipeline = make_pipeline(
        config={
            "notify": {
                "webhook_url": hook,
                "email_to": ["ops@example.com"],
                "smtp_host": "127.0.0.1",
                "smtp_port": smtp_port,
                "quarantine_rate_threshold": 0.1,
            }
        }
    )
    source = tmp_path / "noticed.csv"
    truth = generate_sales(source, 2_000, seed=81, bad_fraction=0.2, order_id_prefix="N")
    pipeline.start()
    shutil.copy(source, pipeline.inbox / source.name)
    (pipeline.inbox / "no-header.csv").write_text("colour,shape\nred,round\n", encoding="utf-8")
    pipeline.wait_for_status(source.name, "done")
    failed = pipeline.wait_for_status("no-header.csv", "failed")
    reason = "no recognisable header: columns 'colour', 'shape'"
    assert failed["error"] == reason

    pipeline.wait_for(lambda: len(inbox.posts) >= 3 and len(inbox.mails) >= 3, 30, "notices")
    kinds = {post["kind"]: post["text"] for post in inbox.posts}
    assert set(kinds) == {"file_done", "file_failed", "quarantine_rate"}
    rejected = sum(truth.rejected.values())
    assert f"{truth.rows} rows read: {truth.valid} valid, {rejected} rejected" in kinds["file_done"]
    assert (
        kinds["file_failed"]
        == f"*tillstream: no-header.csv failed*\n{failed['source_name']}: {reason}"
    )
    mails = {str(mail["Subject"]): mail.get_content().strip() for mail in inbox.mails}
    assert sorted(mails) == [
        f"tillstream: {rejected / truth.rows:.0%} of noticed.csv quarantined",
        "tillstream: no-header.csv failed",
        "tillstream: noticed.csv done",
    ]
    assert mails["tillstream: no-header.csv failed"] == f"{failed['source_name']}: {reason}"


def test_a_notifier_that_is_down_does_not_hold_up_ingestion(
    make_pipeline: Callable[..., Pipeline], tmp_path: Path
) -> None:
    closed = free_port()
    pipeline = make_pipeline(
        config={"notify": {"webhook_url": f"http://127.0.0.1:{closed}/hook", "attempts": 50}}
    )
    pipeline.start()
    for n in range(3):
        source = tmp_path / f"quiet-{n}.csv"
        generate_sales(source, 1_000, seed=90 + n, order_id_prefix=f"Z{n}")
        shutil.copy(source, pipeline.inbox / source.name)
        pipeline.wait_for_status(source.name, "done", timeout=60)
    assert pipeline.metric("tillstream_notifier_notices_total", outcome="retried") > 0
    assert pipeline.metric("tillstream_notifier_notices_total", outcome="sent") == 0

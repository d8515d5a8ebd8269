"""Telling people: a file is done, a file failed, a file's quarantine rate is high.

Notices go into a bounded queue and a background task sends them to a
Slack-compatible webhook and/or by e-mail, retrying with backoff. Processing
never waits for a notice: when a channel is down, its notices wait, and past
the queue's bound the oldest are dropped (and counted), never the data.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import smtplib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import PurePath

import aiohttp

from sinks.history import HistoryEntry
from tillstream import metrics
from tillstream.settings import NotifyConfig

__all__ = ["Notice", "Notifier", "notices_for"]

log = logging.getLogger(__name__)

QUEUE_SIZE = 1000


@dataclass(frozen=True)
class Notice:
    kind: str
    """`file_done`, `file_failed` or `quarantine_rate`."""
    title: str
    text: str


def notices_for(entry: HistoryEntry, rate_threshold: float) -> list[Notice]:
    """What to tell about a source that reached its final status."""
    name = PurePath(entry.source_name).name
    if entry.status == "failed":
        return [
            Notice(
                "file_failed", f"tillstream: {name} failed", f"{entry.source_name}: {entry.error}"
            )
        ]
    rows = entry.rows_read or 0
    counts = (
        f"{entry.source_name}: {rows} rows read: {entry.valid} valid, "
        f"{entry.rejected} rejected, {entry.duplicates} duplicates"
    )
    notices = [Notice("file_done", f"tillstream: {name} done", counts)]
    if rows and entry.rejected / rows > rate_threshold:
        reasons = ", ".join(
            f"{reason} {n}" for reason, n in sorted(entry.rejected_by_reason.items())
        )
        notices.append(
            Notice(
                "quarantine_rate",
                f"tillstream: {entry.rejected / rows:.0%} of {name} quarantined",
                f"{counts}. Reasons: {reasons}.",
            )
        )
    return notices


class Notifier:
    def __init__(self, config: NotifyConfig) -> None:
        self._config = config
        self._queue: asyncio.Queue[Notice] = asyncio.Queue(QUEUE_SIZE)

    @property
    def enabled(self) -> bool:
        return bool(self._config.webhook_url.get_secret_value() or self._config.email_to)

    def notify(self, notice: Notice) -> None:
        """Never blocks: a full queue loses its oldest notice."""
        if not self.enabled:
            return
        if self._queue.full():
            self._queue.get_nowait()
            metrics.NOTIFICATIONS.labels("dropped").inc()
        self._queue.put_nowait(notice)

    async def run(self) -> None:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._config.timeout_seconds)
        ) as session:
            while True:
                notice = await self._queue.get()
                if self._config.webhook_url.get_secret_value():
                    await self._deliver("webhook", functools.partial(self._post, session), notice)
                if self._config.email_to:
                    await self._deliver("email", self._mail, notice)

    async def _deliver(
        self, channel: str, send: Callable[[Notice], Awaitable[None]], notice: Notice
    ) -> None:
        delay = 1.0
        for attempt in range(1, self._config.attempts + 1):
            try:
                await send(notice)
                metrics.NOTIFICATIONS.labels("sent").inc()
                return
            except (aiohttp.ClientError, OSError, smtplib.SMTPException, TimeoutError) as exc:
                metrics.NOTIFICATIONS.labels("retried").inc()
                log.warning(
                    "%s notice failed (attempt %d): %s", channel, attempt, type(exc).__name__
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
        metrics.NOTIFICATIONS.labels("failed").inc()

    async def _post(self, session: aiohttp.ClientSession, notice: Notice) -> None:
        payload = {"text": f"*{notice.title}*\n{notice.text}", "kind": notice.kind}
        url = self._config.webhook_url.get_secret_value()
        async with session.post(url, json=payload) as response:
            response.raise_for_status()

    async def _mail(self, notice: Notice) -> None:
        await asyncio.to_thread(self._send_mail, notice)

    def _send_mail(self, notice: Notice) -> None:
        config = self._config
        message = EmailMessage()
        message["Subject"] = notice.title
        message["From"] = config.email_from
        message["To"] = ", ".join(config.email_to)
        message.set_content(notice.text)
        with smtplib.SMTP(
            config.smtp_host, config.smtp_port, timeout=config.timeout_seconds
        ) as smtp:
            if config.smtp_starttls:
                smtp.starttls()
            if config.smtp_username:
                smtp.login(config.smtp_username, config.smtp_password.get_secret_value())
            smtp.send_message(message)

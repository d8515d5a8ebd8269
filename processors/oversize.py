"""Messages a broker will not take: split or quarantined, never a stopped agent.

The cleaning stage's messages carry each row twice (as received and as cleaned),
so a raw chunk that fits the broker can give a validated message that does not.
The publisher retries what is worth retrying and raises the rest; a message the
broker finds too large is halved (a validated message, by its sales) or cut down
(a dead letter, by its `original`) until it fits. A single sale too large to send
becomes a `message_too_large` dead letter, so its row is still accounted for.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial

from aiokafka.errors import (
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from processors.chunks import CleanedChunk, dead_letter, decode_validated, validated_value
from producers.publisher import KafkaPublisher, Message
from tillstream.records import ReasonCode, decode, encode

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_ORIGINAL_CHARS",
    "publish_cleaned",
    "publish_fitting",
    "shrink_dead_letter",
]

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 2**20 - 2**10
"""Apache Kafka's default `message.max.bytes` (1 MiB, for a batch), less room for the
batch's own header."""
MAX_ORIGINAL_CHARS = 10_000
"""What a dead letter keeps of a row too large to send whole."""
_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError, ValueError)
"""The broker's refusals of a size, and the publisher's of a message over its batch size."""

Header = tuple[str, bytes]


def _fitted(
    messages: list[Message], headers: Sequence[Header], smaller: Callable[[Message], list[Message]]
) -> list[Message]:
    """Each message over MAX_MESSAGE_BYTES replaced by `smaller(message)`, until they fit."""
    extra = sum(len(name) + len(value) for name, value in headers)
    fitted = []
    for message in messages:
        size = len(message.key) + len(message.value or b"") + extra
        if size > MAX_MESSAGE_BYTES and (replacements := smaller(message)) != [message]:
            fitted.extend(_fitted(replacements, headers, smaller))
        else:
            fitted.append(message)
    return fitted


async def publish_fitting(
    publisher: KafkaPublisher,
    topic: str,
    messages: list[Message],
    headers: Sequence[Header],
    smaller: Callable[[Message], list[Message]],
) -> None:
    """Publish, each message too large replaced by `smaller(message)` and sent in its place.

    Sizes are checked before sending against what a broker takes at its defaults: a
    refusal breaks an idempotent producer's sequence for the partition. A broker set
    lower that refuses anyway gets the same treatment, message by message (a message
    may then go twice; every consumer downstream takes that in its stride).
    """
    messages = _fitted(messages, headers, smaller)
    try:
        await publisher.publish(topic, messages, headers)
        return
    except _TOO_LARGE:
        if len(messages) > 1:
            for message in messages:
                await publish_fitting(publisher, topic, [message], headers, smaller)
            return
        replacements = smaller(messages[0])
        if replacements == messages:
            raise
    log.warning("a message too large for %s is sent as %d smaller", topic, len(replacements))
    await publish_fitting(publisher, topic, replacements, headers, smaller)


def shrink_dead_letter(message: Message) -> list[Message]:
    """The dead letter with `original` cut to MAX_ORIGINAL_CHARS (and without the cleaned
    copy a conflict carries), saying so in its messages."""
    letter = decode(message.value or b"{}")
    original = letter["original"]
    text = original if isinstance(original, str) else encode(original).decode()
    if len(text) <= MAX_ORIGINAL_CHARS and "cleaned" not in letter:
        return [message]
    letter.pop("cleaned", None)
    letter["original"] = text[:MAX_ORIGINAL_CHARS]
    letter["messages"] = {
        **letter["messages"],
        "original": f"cut to {MAX_ORIGINAL_CHARS} of {len(text)} characters: "
        "too large for the broker",
    }
    return [Message(message.key, encode(letter), message.partition)]


async def publish_cleaned(
    publisher: KafkaPublisher,
    dlq_topic: str,
    validated_topic: str,
    cleaned: CleanedChunk,
    headers: Sequence[Header],
    now: datetime,
) -> None:
    """The cleaning stage's output: dead letters and validated sales together (one round
    trip to the broker), then any validated row too large to send, as a dead letter.

    Any other refusal the publisher does not retry (an authorization, a broker
    setting) is logged in one line and the chunk skipped rather than the agent
    stopped: its rows stay unaccounted, so its file stays `processing` in the inbox
    and is read again when the watcher next starts.
    """
    unsendable: list[Message] = []
    try:
        await asyncio.gather(
            publish_fitting(
                publisher,
                dlq_topic,
                [*cleaned.dead_letters, *cleaned.released],
                headers,
                shrink_dead_letter,
            ),
            publish_fitting(
                publisher,
                validated_topic,
                cleaned.validated,
                (),
                partial(_halve_validated, unsendable, now),
            ),
        )
        if unsendable:
            await publish_fitting(publisher, dlq_topic, unsendable, headers, shrink_dead_letter)
    except KafkaError as exc:
        log.error(
            "cleaned chunk not published to %s/%s (%s: %s); its file is read again at the "
            "next start of the watcher",
            dlq_topic,
            validated_topic,
            type(exc).__name__,
            exc,
        )


def _halve_validated(unsendable: list[Message], now: datetime, message: Message) -> list[Message]:
    """A validated message as two, by its sales; a single sale too large to send becomes
    a `message_too_large` dead letter, added to `unsendable`."""
    value = message.value or b""
    decoded = decode_validated(value)
    source = decoded.source
    if len(decoded.lines) == 1:
        unsendable.append(
            dead_letter(
                source,
                decoded.lines[0],
                json.dumps(decoded.originals[0].decode()[:MAX_ORIGINAL_CHARS], ensure_ascii=False),
                [ReasonCode.MESSAGE_TOO_LARGE],
                {
                    "row": f"{len(value)} bytes once cleaned, more than the broker takes; "
                    f"original cut to {MAX_ORIGINAL_CHARS} characters"
                },
                now,
            )
        )
        return []
    lines = value.decode().split("\n")[1:]
    middle = len(lines) // 2
    halves = []
    for suffix, part in ((b"a", slice(None, middle)), (b"b", slice(middle, None))):
        facts = (
            None
            if decoded.facts is None
            else {name: values[part] for name, values in decoded.facts.items()}
        )
        half = validated_value(source, facts, lines[part])
        halves.append(Message(message.key + suffix, half, message.partition))
    return halves

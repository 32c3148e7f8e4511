"""Publish a recorded stream to a Pub/Sub topic, optionally at a steady rate.

Each line of a `.jsonl` or `.jsonl.gz` stream becomes one message, in
structured mode (the line itself as the body) or in binary mode (`ce-*`
attributes and the data as the body). A line that is not a valid event is
published as it is, in structured mode, and counted: that is how a
dead-letter path is exercised on purpose.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import structlog

from engine.errors import ConfigurationError, EventRejected
from engine.events import parse_event_line
from engine.replay import iter_numbered_lines, open_stream
from infra.cloudevents import encode_binary
from infra.pubsub import STRUCTURED_CONTENT_TYPE, PubSubPublisher

__all__ = [
    "MAX_MESSAGE_BYTES",
    "PublishSummary",
    "TokenBucket",
    "encode_line",
    "publish_stream",
]

# Pub/Sub takes at most 10 MB in one message. The emulator does not refuse
# a larger one: it leaves the request unanswered until its deadline, and a
# publish with retries then gave up only minutes later, on a timeout.
MAX_MESSAGE_BYTES = 10_000_000

# Messages per publish call: the call keeps the id of every message it
# published until it returns, so a chunk bounds the memory a long stream
# takes.
_CHUNK = 10_000

log = structlog.get_logger(__name__)

Message = tuple[bytes, dict[str, str]]


@dataclass
class PublishSummary:
    """What one publish run sent."""

    topic: str
    published: int = 0
    malformed: int = 0
    seconds: float = 0.0

    @property
    def events_per_second(self) -> float:
        """Return the messages published per wall-clock second."""
        return self.published / self.seconds if self.seconds > 0 else 0.0

    def render(self) -> str:
        """Return the summary as one line for people."""
        line = (
            f"published {self.published} messages to {self.topic} in "
            f"{self.seconds:.2f} s ({self.events_per_second:.0f} messages/s)"
        )
        if self.malformed:
            line += f"; {self.malformed} malformed lines were published as they are"
        return line


class TokenBucket:
    """Let `take` through at `rate` per second on average.

    The bucket holds at most `burst` tokens, so after a pause at most that
    many go through at once; a small burst keeps the rate steady over
    short intervals while sleeping only every few takes.

    Args:
        rate: takes per second, more than 0.
        burst: the bucket's size; by default 20 ms worth of takes, at least 1.
        clock: a monotonic clock in seconds.
        sleep: a function that waits the given seconds.
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ConfigurationError(f"A rate must be above 0, not {rate:g}.")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate / 50)
        self._clock = clock
        self._sleep = sleep
        self._tokens = 1.0
        self._last = clock()

    def take(self) -> None:
        """Wait until a token is available, then use it."""
        self._refill()
        if self._tokens < 1.0:
            self._sleep((1.0 - self._tokens) / self.rate)
            # Refilled from the clock, not assumed: a sleep that overshoots
            # leaves credit for the next takes, up to the burst.
            self._refill()
        self._tokens -= 1.0

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now


def encode_line(line: bytes, binary: bool) -> tuple[Message, bool]:
    """Return the message for one stream line, and whether the line is malformed.

    A malformed line is sent as it is, marked as a structured CloudEvent so
    that the consumer reports the fault itself rather than guessing at a
    plain JSON body.
    """
    try:
        event = parse_event_line(line)
    except EventRejected:
        return (line, {"content-type": STRUCTURED_CONTENT_TYPE}), True
    if binary:
        return encode_binary(event), False
    return (line, {"content-type": STRUCTURED_CONTENT_TYPE}), False


def publish_stream(
    path: str | Path,
    publisher: PubSubPublisher,
    topic: str,
    *,
    binary: bool = False,
    bucket: TokenBucket | None = None,
) -> PublishSummary:
    """Publish every line of a recorded stream; see the module docstring.

    Args:
        path: the stream, `.jsonl` or `.jsonl.gz`.
        publisher: the Pub/Sub publisher of the project.
        topic: a topic id or full topic path.
        binary: send CloudEvents in binary mode instead of structured mode.
        bucket: paces the messages, one token each; None sends at full speed.

    Raises:
        ConfigurationError: the stream cannot be read.
        SourceError: Pub/Sub refused messages; TransientSourceError if a
            retry may succeed (and may duplicate messages already sent).
    """
    summary = PublishSummary(topic=topic)
    started = time.perf_counter()
    with open_stream(path) as stream:
        reading = _Reading(iter_numbered_lines(stream))
        messages = _messages(reading, binary, bucket, summary)
        # islice stays lazy, so each message goes out as soon as the bucket
        # lets it, not when its chunk is complete.
        while message_ids := publisher.publish(topic, islice(messages, _CHUNK)):
            summary.published += len(message_ids)
    summary.seconds = time.perf_counter() - started
    log.info(
        "stream published",
        topic=topic,
        published=summary.published,
        malformed=summary.malformed,
        seconds=round(summary.seconds, 3),
    )
    if reading.error is not None:
        raise ConfigurationError(
            f"The event file {str(path)!r} could not be read after line "
            f"{reading.line}: {reading.error}; the {summary.published} "
            "messages before it were published."
        ) from reading.error
    return summary


class _Reading:
    """A stream's lines, ending early at a read error that it keeps.

    A truncated gzip file or a disk error ends the lines instead of the
    publish call, so that what was read is still published and counted.
    """

    def __init__(self, lines: Iterator[tuple[int, bytes]]) -> None:
        self._lines = lines
        self.line = 0
        self.error: Exception | None = None

    def __iter__(self) -> Iterator[bytes]:
        try:
            for number, line in self._lines:
                line = line.rstrip(b"\r\n")
                if len(line) > MAX_MESSAGE_BYTES:
                    self.error = ValueError(
                        f"line {number} is {len(line)} bytes, more than the "
                        f"{MAX_MESSAGE_BYTES} bytes Pub/Sub takes in one message"
                    )
                    return
                self.line = number
                yield line
        except (OSError, EOFError, zlib.error) as error:
            self.error = error


def _messages(
    lines: Iterable[bytes],
    binary: bool,
    bucket: TokenBucket | None,
    summary: PublishSummary,
) -> Iterator[Message]:
    for line in lines:
        message, malformed = encode_line(line, binary)
        if malformed:
            summary.malformed += 1
        if bucket is not None:
            bucket.take()
        yield message

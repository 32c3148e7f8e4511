"""Record a subscription into a stream file that `replay` reads.

Each accepted message is written as its event's CloudEvent mapping, one
compact JSON line, and acknowledged only after its batch is flushed:

1. A message is never acknowledged before its line reached the operating
   system, so a crash of the recorder loses nothing; Pub/Sub delivers the
   unacknowledged batch again.
2. The price is that a crash between the flush and the acknowledgement
   writes that batch twice. `replay` drops the repeated event ids.
3. The file is flushed, not synced to disk: a crash of the whole machine
   may lose the last batches that were already acknowledged.

Messages that are not acceptable events are acknowledged too, so that they
do not come back forever: written to a rejects file when one is given,
otherwise counted and logged.
"""

from __future__ import annotations

import gzip
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, cast

import orjson
import structlog

from engine.errors import EventRejected
from infra.pubsub import PubSubSource, ReceivedMessage

__all__ = ["RecordSummary", "open_output", "record_subscription"]

# The largest pull; the emulator returns at most 100 messages per pull.
_PULL_SIZE = 1000
# The longest a single pull waits when no idle limit is closer.
_PULL_TIMEOUT = 5.0
# Raw bodies kept per rejected message in the rejects file.
_RAW_LIMIT = 4096

log = structlog.get_logger(__name__)


@dataclass
class RecordSummary:
    """What one recording pulled, wrote and rejected."""

    subscription: str
    written: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def rejected_total(self) -> int:
        """Return the number of rejected messages."""
        return sum(self.rejected.values())

    @property
    def handled(self) -> int:
        """Return the number of messages written or rejected."""
        return self.written + self.rejected_total

    def render(self) -> str:
        """Return the summary as lines for people."""
        rate = self.handled / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"recorded {self.written} events from {self.subscription}, rejected "
            f"{self.rejected_total}, in {self.seconds:.2f} s ({rate:.0f} messages/s)"
        ]
        lines += [
            f"  rejected {reason}: {count}"
            for reason, count in sorted(self.rejected.items())
        ]
        return "\n".join(lines)


def open_output(path: str | Path) -> IO[bytes]:
    """Open a stream file for appending, gzipped when it ends in `.gz`.

    Appending keeps what an earlier run recorded and acknowledged, which
    exists nowhere else; a gzip file then holds several members, which gzip
    readers take as one stream. The file's folder must exist (the record
    command makes it as it checks the name).
    """
    target = Path(path)
    if target.suffix == ".gz":
        # typeshed types GzipFile as a buffered stream, not as IO[bytes],
        # though it has every method used here.
        return cast("IO[bytes]", gzip.open(target, "ab"))
    return target.open("ab")


def record_subscription(
    source: PubSubSource,
    out: IO[bytes],
    *,
    rejects_out: IO[bytes] | None = None,
    idle_seconds: float | None = None,
    max_messages: int | None = None,
) -> RecordSummary:
    """Pull, decode, write and acknowledge until idle, full, or interrupted.

    Args:
        source: the subscription to record.
        out: where the event lines go.
        rejects_out: where rejected messages go, one JSON line each.
        idle_seconds: stop after this long without a message.
        max_messages: stop after this many messages, written or rejected.

    Raises:
        SourceError: Pub/Sub refused a pull or an acknowledgement;
            TransientSourceError if it was unavailable. Written batches stay
            written; the unacknowledged one is delivered again.
    """
    summary = RecordSummary(subscription=source.subscription_path)
    started = last_message = time.monotonic()
    log.info("recording started", subscription=source.subscription_path)
    try:
        while max_messages is None or summary.handled < max_messages:
            wanted = _PULL_SIZE
            if max_messages is not None:
                wanted = min(wanted, max_messages - summary.handled)
            timeout = _PULL_TIMEOUT
            if idle_seconds is not None:
                left = idle_seconds - (time.monotonic() - last_message)
                if left <= 0:
                    break
                timeout = max(0.1, min(timeout, left))

            batch = source.pull(max_messages=wanted, timeout=timeout)
            if not batch:
                continue
            last_message = time.monotonic()
            _write_batch(source, batch, out, rejects_out, summary)
            source.ack([message.ack_id for message in batch])
    except KeyboardInterrupt:
        # The batch in hand, if any, was not acknowledged and comes back.
        log.info("recording interrupted", subscription=source.subscription_path)

    summary.seconds = time.monotonic() - started
    log.info(
        "recording stopped",
        subscription=source.subscription_path,
        written=summary.written,
        rejected=summary.rejected_total,
    )
    return summary


def _write_batch(
    source: PubSubSource,
    batch: list[ReceivedMessage],
    out: IO[bytes],
    rejects_out: IO[bytes] | None,
    summary: RecordSummary,
) -> None:
    lines: list[bytes] = []
    rejects: list[bytes] = []
    for message in batch:
        try:
            event = source.decode(message)
        except EventRejected as rejection:
            summary.rejected[rejection.reason] += 1
            if rejects_out is not None:
                rejects.append(_reject_line(message, rejection))
            else:
                log.warning(
                    "message rejected",
                    message_id=message.message_id,
                    reason=rejection.reason,
                    error=str(rejection),
                )
            continue
        lines.append(orjson.dumps(event.to_mapping(), option=orjson.OPT_APPEND_NEWLINE))

    if lines:
        out.write(b"".join(lines))
        out.flush()
    if rejects and rejects_out is not None:
        rejects_out.write(b"".join(rejects))
        rejects_out.flush()
    summary.written += len(lines)


def _reject_line(message: ReceivedMessage, rejection: EventRejected) -> bytes:
    entry = {
        "message_id": message.message_id,
        "reason": rejection.reason,
        "error": str(rejection),
        "attributes": message.attributes,
        "raw": message.data[:_RAW_LIMIT].decode("utf-8", errors="replace"),
    }
    return orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE)

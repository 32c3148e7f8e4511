"""Pull messages ahead of the worker, in background threads.

A synchronous pull spends nearly all its time waiting for Pub/Sub, and
gRPC releases the GIL while it waits. `Prefetcher` keeps pulls
outstanding in threads of its own (one by default) and queues what they
return, so that the worker's thread decodes and evaluates while the next
messages are already on their way, instead of waiting for each pull.

Flow control. Every message the prefetcher hands out stays *held* until
the worker settles it (acknowledges or returns it), and no pull asks for
more than the room left under `max_held`. That bounds memory, and also
the messages whose ack deadline runs while they wait: the held ones are
the ones to extend during a long commit.

Order. Pub/Sub hands out messages roughly in publish order, but of two
pulls running at once either may answer first. Each pull takes a ticket
as it starts, and answers are queued in ticket order. That is not quite
the order Pub/Sub handed them out in: the pull started second sometimes
reaches the server first. Measured on the emulator with two pulls, about
60 answers in 1,000 still came behind later ones, and their events were
late for the engine's windows (0.5 to 1.3% of a 100,000-event stream),
so the worker keeps one pull outstanding by default, which keeps the
order exactly.

Pull deadlines. A pull is never cut short by a client deadline shorter
than `pull_timeout`: Pub/Sub may have handed messages to a pull whose
answer the client then no longer waits for, and those come back only
once their ack deadline has passed. Short looks for "anything more?"
were what lost messages for minutes; threads that keep a normal pull
open make them unneeded.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable

import structlog

from infra.pubsub import (
    PubSubSource,
    ReceivedMessage,
    SourceError,
    TransientSourceError,
)

__all__ = ["Prefetcher"]

log = structlog.get_logger(__name__)

# Pub/Sub returns at most 1,000 messages a pull.
_MAX_PULL = 1000
_BACKOFF_SECONDS = 5.0
_FULL_ANSWER = 100


class Prefetcher:
    """Keep `pulls` pulls outstanding and queue their messages for `take`.

    Args:
        source: the subscription to pull from.
        pulls: pulls outstanding at once (threads).
        max_held: messages handed out or queued, but not yet settled, at
            most; pulls wait while they are this many.
        pull_timeout: seconds each pull may wait for messages.
        ahead: pull while earlier messages are still held. Off for an
            ordered subscription: the emulator delivers the next messages
            of a key before the earlier ones are acknowledged, and
            redelivers returned ones after those, out of order.
    """

    def __init__(
        self,
        source: PubSubSource,
        *,
        pulls: int = 1,
        max_held: int = 6000,
        pull_timeout: float = 1.0,
        ahead: bool = True,
    ) -> None:
        self.source = source
        self.ahead = ahead
        self.pulls = pulls
        self.max_held = max_held
        self.pull_timeout = pull_timeout
        self._changed = threading.Condition()
        self._queue: deque[ReceivedMessage] = deque()
        # Ack ids of every message pulled and not yet settled, queued ones
        # included; `_reserved` counts the room that running pulls asked for.
        self._held: dict[str, float] = {}
        self._reserved = 0
        # Tickets: the next to hand out, the next to queue, and answers
        # that came before an earlier ticket's.
        self._next_ticket = 0
        self._next_queued = 0
        self._answers: dict[int, tuple[int, list[ReceivedMessage]]] = {}
        self._empty_pulls = 0
        # Whether the last answer queued was short: fewer messages than
        # asked for and than the largest answer so far, which says that
        # nothing else was waiting. The emulator never returns more than
        # 100 at once, and Pub/Sub often no more, so 100 counts as full.
        self._short = False
        self._largest = _FULL_ANSWER
        self._woken = False
        # Why the last pull failed, while pulls fail for a reason that a
        # retry may fix; None once one succeeds.
        self.pull_error: str | None = None
        self._error: SourceError | None = None
        self._running = False
        self._threads: list[threading.Thread] = []

    # Life cycle

    def start(self) -> None:
        """Start the pulling threads."""
        with self._changed:
            self._running, self._error, self._empty_pulls = True, None, 0
            self._next_ticket = self._next_queued = 0
        self._threads = [
            threading.Thread(target=self._pull_loop, name=f"prefetch-{i}", daemon=True)
            for i in range(self.pulls)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> list[ReceivedMessage]:
        """Stop pulling; return the queued messages, which stay held.

        Waits for running pulls to return, at most `pull_timeout` and a
        little more, so that none of their messages is left unaccounted.
        """
        with self._changed:
            self._running = False
            self._changed.notify_all()
        for thread in self._threads:
            thread.join(self.pull_timeout + 30)
        self._threads = []
        with self._changed:
            queued = list(self._queue)
            # Only a pull that outlived the wait leaves a gap in the tickets.
            for ticket in sorted(self._answers):
                queued += self._answers[ticket][1]
            self._queue.clear()
            self._answers.clear()
        return queued

    @property
    def running(self) -> bool:
        """Tell whether the pulling threads were started and not stopped."""
        return self._running

    # The worker's side

    def take(self, limit: int, timeout: float) -> list[ReceivedMessage]:
        """Return up to `limit` queued messages, waiting up to `timeout` for one.

        Returns early, possibly empty, after `wake`.

        Raises:
            SourceError: Pub/Sub refused a pull (a missing subscription).
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._queue and not self._woken and self._error is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            self._woken = False
            if self._error is not None:
                raise self._error
            count = min(limit, len(self._queue))
            return [self._queue.popleft() for _ in range(count)]

    def wake(self) -> None:
        """Make a waiting or the next `take` return at once."""
        with self._changed:
            self._woken = True
            self._changed.notify_all()

    def release(self, ack_ids: Iterable[str]) -> None:
        """Forget settled messages, making room for more pulls."""
        with self._changed:
            for ack_id in ack_ids:
                self._held.pop(ack_id, None)
            self._changed.notify_all()

    def held(self) -> list[str]:
        """Return the ack ids of the messages pulled and not yet settled."""
        with self._changed:
            return list(self._held)

    @property
    def held_count(self) -> int:
        """Return how many messages are pulled and not yet settled."""
        return len(self._held)

    @property
    def quiet(self) -> bool:
        """Tell whether the last pull found nothing and nothing is queued."""
        with self._changed:
            return not self._queue and self._empty_pulls > 0

    @property
    def caught_up(self) -> bool:
        """Tell whether the last pull came back short and nothing is queued.

        Pub/Sub then had no more messages ready at that moment: the worker
        has caught up with the stream, and waiting longer only adds delay.
        """
        with self._changed:
            return not self._queue and self._short

    # The pulling threads

    def _pull_loop(self) -> None:
        while True:
            wanted, ticket = self._reserve()
            if wanted == 0:
                return
            try:
                messages = self.source.pull(wanted, timeout=self.pull_timeout)
            except TransientSourceError as error:
                log.warning("pull failed", error=str(error))
                self.pull_error = str(error)
                self._deliver(wanted, ticket, [])
                self._sleep(_BACKOFF_SECONDS)
                continue
            except SourceError as error:
                self._deliver(wanted, ticket, [], error)
                return
            self.pull_error = None
            self._deliver(wanted, ticket, messages)

    def _reserve(self) -> tuple[int, int]:
        """Wait for room under `max_held`; return how much and a ticket.

        Returns no room once the prefetcher stops.
        """
        with self._changed:
            while self._running:
                room = self.max_held - len(self._held) - self._reserved
                if not self.ahead and (self._held or self._reserved):
                    room = 0
                if room > 0:
                    wanted = min(room, _MAX_PULL)
                    self._reserved += wanted
                    self._next_ticket += 1
                    return wanted, self._next_ticket - 1
                self._changed.wait()
            return 0, -1

    def _deliver(
        self,
        wanted: int,
        ticket: int,
        messages: list[ReceivedMessage],
        error: SourceError | None = None,
    ) -> None:
        """Hold the answer of a pull, then queue every answer now in turn."""
        now = time.monotonic()
        with self._changed:
            self._reserved -= wanted
            for message in messages:
                self._held[message.ack_id] = now
            self._answers[ticket] = (wanted, messages)
            while self._next_queued in self._answers:
                asked, answer = self._answers.pop(self._next_queued)
                self._next_queued += 1
                self._queue.extend(answer)
                self._empty_pulls = 0 if answer else self._empty_pulls + 1
                self._largest = max(self._largest, len(answer))
                # Without pulling ahead, an answer is all until it is settled.
                full = len(answer) >= min(asked, self._largest)
                self._short = not full or not self.ahead
                # An answer with nothing in it still tells the worker that
                # it has caught up.
                self._woken = self._woken or not answer
            if error is not None:
                self._error = error
            self._changed.notify_all()

    def _sleep(self, seconds: float) -> None:
        """Wait `seconds`, or less if the prefetcher stops meanwhile."""
        with self._changed:
            self._changed.wait_for(lambda: not self._running, seconds)

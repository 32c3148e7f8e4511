"""Put events back into event-time order before the engine sees them.

Pub/Sub keeps the order of messages only on a subscription with message
ordering, for messages that share an ordering key. The engine's results
depend on the order of events: which event crosses a threshold, which one
a window still counts. `ReorderBuffer` holds accepted events and releases
them in event-time order, arrival order among equal times, once the
watermark has reached them. The watermark is the latest event time seen
minus the allowed lateness.

1. With no lateness allowed, every event is released as it arrives (the
   watermark is its own time, or later), in arrival order within a pull
   sorted by time. On an ordered subscription of a stream published in
   time order, that is exactly the published order, whatever the batches,
   redeliveries included: a worker computes what `replay` computes.
2. With lateness L allowed, an event may arrive up to L of event time after
   a later one and still take its place; every event waits until the
   watermark passes it, so L is also the added delay.
3. An event that arrives after a later one was released is processed at
   once, in arrival order, and counted as late. What it changes depends on
   the rule: a window that has closed ignores it.

Events still waiting are part of the worker's checkpoint, so that their
messages can be acknowledged once they are durable, released or not.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any, Literal

from engine.events import Event, event_from_mapping

__all__ = ["AddOutcome", "ReorderBuffer"]

AddOutcome = Literal["queued", "late", "duplicate"]


class ReorderBuffer:
    """Hold events until the watermark reaches them; release them in order.

    Args:
        lateness: seconds of event time that an event may arrive after a
            later one and still take its place in the order.
    """

    def __init__(self, lateness: float = 0.0) -> None:
        self.lateness = lateness
        self.max_seen = float("-inf")
        # (time, arrival, event), in arrival order; sorted when released.
        # Sorting a batch once costs less than keeping a heap per event,
        # and events mostly arrive nearly in order, which the sort finds.
        self._pending: list[tuple[float, int, Event]] = []
        self._ids: set[str] = set()
        self._arrivals = 0
        # The time of the last event released; an event older than that
        # arrived too late for its place.
        self._released = float("-inf")

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def watermark(self) -> float:
        """Return the event time up to which every event is released."""
        return self.max_seen - self.lateness

    def add(self, event: Event) -> AddOutcome:
        """Queue an event; say whether it is late or already queued."""
        if event.id in self._ids:
            return "duplicate"
        self._ids.add(event.id)
        self._arrivals += 1
        self._pending.append((event.ts, self._arrivals, event))
        self.max_seen = max(self.max_seen, event.ts)
        return "late" if event.ts < self._released else "queued"

    def release(self) -> list[Event]:
        """Return the events the watermark has reached, in order."""
        return self._pop_through(self.watermark)

    def drain(self) -> list[Event]:
        """Return every queued event, in order: the stream has gone quiet."""
        return self._pop_through(float("inf"))

    def _pop_through(self, bound: float) -> list[Event]:
        pending = self._pending
        if not pending:
            return []
        pending.sort()
        if pending[-1][0] <= bound:
            taken, self._pending = pending, []
        else:
            cut = bisect_right(pending, (bound, float("inf")))
            taken, self._pending = pending[:cut], pending[cut:]
        if not taken:
            return []
        ids = self._ids
        events = []
        for _, _, event in taken:
            ids.discard(event.id)
            events.append(event)
        self._released = max(self._released, taken[-1][0])
        return events

    def snapshot(self) -> dict[str, Any]:
        """Return the buffer as JSON-compatible data."""
        finite = self.max_seen != float("-inf")
        return {
            "max_seen": self.max_seen if finite else None,
            "released": self._released if self._released != float("-inf") else None,
            "events": [event.to_mapping() for _, _, event in sorted(self._pending)],
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Continue from a snapshot taken by `snapshot`.

        The allowed lateness stays as configured now, not as saved.
        """
        max_seen, released = data["max_seen"], data["released"]
        self.max_seen = float("-inf") if max_seen is None else max_seen
        self._released = float("-inf") if released is None else released
        self._pending, self._ids, self._arrivals = [], set(), 0
        for mapping in data["events"]:
            self.add(event_from_mapping(mapping))
        self.max_seen = float("-inf") if max_seen is None else max_seen

"""Sliding windows of event time, kept as buckets.

A window of width W with resolution R keeps at most W/R + 1 buckets, so its
memory does not depend on the event rate. Values follow the window's end
(`now`, the engine's event-time clock): an event older than `now - W` is
too late to count and is reported as such.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from typing import Any

__all__ = ["SlidingWindow", "default_resolution"]


_ceil, _floor = math.ceil, math.floor
# How much earlier than computed a window checks for expiry (seconds).
_MARGIN = 1e-3


def _time_of(entry: tuple[float, Any]) -> float:
    return entry[0]


def default_resolution(window: float) -> float:
    """Return the bucket width for a window: 1/60 of it, at least one second."""
    return max(1.0, window / 60.0)


class SlidingWindow:
    """Count, sum, average, minimum, maximum, distinct count or latest value."""

    __slots__ = (
        "_buckets",
        "_count",
        "_distinct",
        "_distinct_order",
        "_next_expiry",
        "_sum",
        "fn",
        "latest",
        "latest_ts",
        "recent",
        "resolution",
        "width",
    )

    def __init__(self, fn: str, width: float | None, resolution: float | None) -> None:
        self.fn = fn
        self.width = width
        # The earliest `now` at which expiry may drop something: until then
        # a value needs no expiry at all (most events, since buckets leave
        # once per resolution). Kept a millisecond early: float rounding may
        # only cost a needless check, never a missed one.
        self._next_expiry = math.inf
        self.resolution = resolution or (default_resolution(width) if width else 1.0)
        # Buckets: [index, count, sum, min, max], oldest first. A count
        # window keeps only the counts up to date.
        self._buckets: deque[list[Any]] = deque()
        self._count = 0
        self._sum = 0.0
        self._distinct: dict[Any, float] = {}
        self._distinct_order: deque[tuple[float, Any]] = deque()
        self.latest: float | None = None
        self.latest_ts = -math.inf
        # Ids of the last events that counted, for explanations.
        self.recent: deque[tuple[float, str]] = deque(maxlen=10)

    def add(self, ts: float, value: Any, now: float, event_id: str) -> bool:
        """Count one event; return False if it is too late for the window."""
        width = self.width
        if width is None:
            return self._add_unbounded(ts, value, event_id)
        if ts <= now - width:
            return False
        self.recent.append((ts, event_id))
        fn = self.fn
        if fn == "latest" or fn == "distinct":
            return self._add_point(ts, value)

        # Buckets are closed on the right, (i*R, (i+1)*R], like the window
        # (now - W, now]: an event on a bucket edge leaves the window exactly
        # when `add` would call it too late.
        index = _ceil(ts / self.resolution) - 1
        buckets = self._buckets
        # Most events fall in the newest bucket or open one after it.
        last = buckets[-1] if buckets else None
        if last is None or last[0] < index:
            bucket = [index, 0, 0.0, value, value]
            buckets.append(bucket)
            if last is None:
                self._next_expiry = self._bucket_expiry(index)
        elif last[0] == index:
            bucket = last
        else:
            bucket = self._find_bucket(index, value)
        bucket[1] += 1
        self._count += 1
        if fn != "count":
            bucket[2] += value
            if value < bucket[3]:
                bucket[3] = value
            if value > bucket[4]:
                bucket[4] = value
            self._sum += value
        return True

    def _add_unbounded(self, ts: float, value: Any, event_id: str) -> bool:
        # A running total (balance without a window) or a value kept forever.
        self.recent.append((ts, event_id))
        if self.fn == "latest" or self.fn == "distinct":
            return self._add_point(ts, value)
        self._count += 1
        self._sum += value
        return True

    def _add_point(self, ts: float, value: Any) -> bool:
        width = math.inf if self.width is None else self.width
        if self.fn == "latest":
            if ts >= self.latest_ts:
                self.latest, self.latest_ts = value, ts
                self._next_expiry = ts + width - _MARGIN
            return True
        self._distinct[value] = max(ts, self._distinct.get(value, -math.inf))
        # Kept in time order, a late event included, so that expiry (which
        # looks only at the oldest entry) drops it on time.
        bisect.insort(self._distinct_order, (ts, value), key=_time_of)
        self._next_expiry = self._distinct_order[0][0] + width - _MARGIN
        return True

    def _bucket_expiry(self, index: int) -> float:
        """When the bucket with this index may leave the window."""
        assert self.width is not None
        return (index + 1) * self.resolution + self.width - _MARGIN

    def _find_bucket(self, index: int, value: Any) -> list[Any]:
        # A late event inside the window: rare, so a linear search is fine.
        for position, bucket in enumerate(self._buckets):
            if bucket[0] == index:
                return bucket
            if bucket[0] > index:
                created = [index, 0, 0.0, value, value]
                self._buckets.insert(position, created)
                if position == 0:
                    self._next_expiry = self._bucket_expiry(index)
                return created
        created = [index, 0, 0.0, value, value]
        self._buckets.append(created)
        return created

    def expire(self, now: float) -> None:
        """Drop what has left the window at time `now`."""
        width = self.width
        if width is None:
            return
        horizon = now - width
        fn = self.fn
        if fn == "latest":
            if self.latest_ts <= horizon:
                self.latest, self.latest_ts = None, -math.inf
                self._next_expiry = math.inf
            return
        if fn == "distinct":
            order, seen = self._distinct_order, self._distinct
            while order and order[0][0] <= horizon:
                ts, value = order.popleft()
                if seen.get(value) == ts:
                    del seen[value]
            self._next_expiry = order[0][0] + width - _MARGIN if order else math.inf
            return
        # A bucket leaves once its whole span is at or before the horizon.
        limit = _floor(horizon / self.resolution)
        buckets = self._buckets
        if buckets and buckets[0][0] < limit:
            count = self._count
            while buckets and buckets[0][0] < limit:
                count -= buckets.popleft()[1]
            self._count = count
            # Summed afresh rather than subtracted: subtracting floats leaves
            # rounding residue that builds up over a long stream (0.6 - 0.1
            # would give 0.5000000000000001). Not with math.fsum, which
            # raises where a sum overflows to infinity.
            if fn != "count":
                self._sum = sum(bucket[2] for bucket in buckets)
        # `_bucket_expiry`, inline: this runs for most events.
        self._next_expiry = (
            (buckets[0][0] + 1) * self.resolution + width - _MARGIN
            if buckets
            else math.inf
        )

    def value(self, now: float) -> float | None:
        """Return the aggregate at time `now`, or None when there is no data."""
        if now >= self._next_expiry:
            self.expire(now)
        fn = self.fn
        if fn == "count":
            return float(self._count)
        if fn == "sum":
            return self._sum if self._count else 0.0
        if fn == "balance":
            return self._sum
        if fn == "avg":
            return self._sum / self._count if self._count else None
        if fn == "distinct":
            return float(len(self._distinct))
        if fn == "latest":
            return self.latest
        if not self._buckets:
            return None
        if fn == "max":
            return float(max(b[4] for b in self._buckets))
        return float(min(b[3] for b in self._buckets))

    def recent_ids(self, now: float) -> list[str]:
        """Return the ids of the last events counted that are still inside."""
        horizon = now - self.width if self.width is not None else -math.inf
        return [event_id for ts, event_id in self.recent if ts > horizon]

    def is_empty(self) -> bool:
        """Tell whether the window holds nothing (after expiry)."""
        if self.fn == "distinct":
            return not self._distinct
        if self.fn == "latest":
            return self.latest is None
        return self._count == 0 and not self._buckets

    def snapshot(self) -> dict[str, Any]:
        """Return the window's content as JSON-compatible data."""
        return {
            "b": [list(b) for b in self._buckets],
            "c": self._count,
            "s": self._sum,
            "d": [[ts, v] for ts, v in self._distinct_order],
            "l": self.latest,
            "lt": self.latest_ts if self.latest is not None else None,
            "r": [list(entry) for entry in self.recent],
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Load content saved by `snapshot`."""
        # The next value runs a full expiry, which sets the real bound.
        self._next_expiry = -math.inf
        self._buckets = deque(list(b) for b in data["b"])
        self._count = data["c"]
        self._sum = data["s"]
        self._distinct_order = deque((ts, v) for ts, v in data["d"])
        self._distinct = {}
        for ts, v in self._distinct_order:
            self._distinct[v] = max(ts, self._distinct.get(v, -math.inf))
        self.latest = data["l"]
        self.latest_ts = data["lt"] if data["lt"] is not None else -math.inf
        self.recent = deque(((ts, i) for ts, i in data["r"]), maxlen=10)

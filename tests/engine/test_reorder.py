"""Tests of the reorder buffer that puts events into event-time order."""

from __future__ import annotations

import pytest

from engine.events import Event, format_time
from engine.reorder import ReorderBuffer


def _event(name: str, ts: float) -> Event:
    return Event(
        id=name,
        source="/tests",
        type="user.profile_updated",
        time=format_time(ts),
        ts=ts,
        data={"uid": name},
    )


# Each case: the allowed lateness, the pulls as (id, time) arrivals, and the
# ids released after each pull.
_CASES = [
    (
        "without lateness every event goes at once, sorted within its pull",
        0.0,
        [[("b", 2), ("a", 1)], [("c", 3)]],
        [["a", "b"], ["c"]],
    ),
    (
        "equal times keep their arrival order, across pulls too",
        0.0,
        [[("z", 5), ("y", 5)], [("x", 5)]],
        [["z", "y"], ["x"]],
    ),
    (
        "lateness holds events until the watermark reaches them",
        10.0,
        [[("a", 100), ("b", 105)], [("c", 103), ("d", 111)], [("e", 130)]],
        [[], ["a"], ["c", "b", "d"]],
    ),
    (
        "an event arriving after a later one was released goes next",
        0.0,
        [[("a", 10)], [("b", 5)]],
        [["a"], ["b"]],
    ),
]


@pytest.mark.parametrize(
    ("lateness", "pulls", "released"),
    [case[1:] for case in _CASES],
    ids=[case[0] for case in _CASES],
)
def test_release_follows_event_time_within_the_allowed_lateness(
    lateness: float,
    pulls: list[list[tuple[str, float]]],
    released: list[list[str]],
) -> None:
    """Each pull releases what the watermark has reached, in order."""
    buffer = ReorderBuffer(lateness)
    seen = []
    for pull in pulls:
        for name, ts in pull:
            buffer.add(_event(name, ts))
        seen.append([event.id for event in buffer.release()])

    assert seen == released


def test_add_tells_late_and_duplicate_events_apart() -> None:
    """An event older than one released is late; a waiting id is a duplicate."""
    buffer = ReorderBuffer(5.0)

    outcomes = [buffer.add(_event("a", 100)), buffer.add(_event("b", 110))]
    buffer.release()
    outcomes += [
        buffer.add(_event("b", 110)),
        buffer.add(_event("c", 99)),
        buffer.add(_event("d", 101)),
    ]

    assert outcomes == ["queued", "queued", "duplicate", "late", "queued"]


def test_drain_releases_every_waiting_event_in_order() -> None:
    """A quiet stream lets the newest events go without a later one."""
    buffer = ReorderBuffer(60.0)
    for name, ts in (("c", 30), ("a", 10), ("b", 20)):
        buffer.add(_event(name, ts))

    assert buffer.release() == []
    assert [event.id for event in buffer.drain()] == ["a", "b", "c"]
    assert len(buffer) == 0


def test_a_restored_buffer_continues_exactly() -> None:
    """Waiting events, the watermark and what was released survive a snapshot."""
    buffer = ReorderBuffer(10.0)
    for name, ts in (("a", 100), ("b", 115), ("c", 104)):
        buffer.add(_event(name, ts))
    first = [event.id for event in buffer.release()]

    restored = ReorderBuffer(10.0)
    restored.restore(buffer.snapshot())
    late = restored.add(_event("old", 50))
    restored.add(_event("d", 130))

    assert first == ["a", "c"]
    assert late == "late"
    assert len(restored) == 3
    assert [event.id for event in restored.release()] == ["old", "b"]

"""Tests of sliding windows of event time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.windows import SlidingWindow, default_resolution

FIXTURES = Path(__file__).parents[1] / "fixtures" / "windows"
CASES = yaml.safe_load((FIXTURES / "cases.yaml").read_text())["cases"]


def filled(case: dict[str, Any]) -> SlidingWindow:
    """Return a window of the case with its events added."""
    window = SlidingWindow(case["fn"], case["window"], case.get("resolution"))
    for number, (ts, value, *clock) in enumerate(case["events"]):
        now = clock[0] if clock else ts
        assert window.add(ts, value, now, f"e{number}")
    return window


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_window_value_at_each_time(case: dict[str, Any]) -> None:
    """Each aggregate has its exact value, and events leave on time."""
    window = filled(case)

    values = [window.value(now) for now, _ in case["expect"]]

    assert values == [expected for _, expected in case["expect"]]


@pytest.mark.parametrize(
    ("ts", "now", "accepted"),
    [
        (100, 100, True),
        (41, 100, True),
        (40.001, 100, True),
        (40, 100, False),
        (10, 100, False),
    ],
)
def test_an_event_at_or_before_the_window_start_is_too_late(
    ts: float, now: float, accepted: bool
) -> None:
    """`add` refuses exactly what `value` would already have dropped."""
    window = SlidingWindow("count", 60, None)

    assert window.add(ts, 1, now, "late") is accepted
    assert window.value(now) == (1 if accepted else 0)


@pytest.mark.parametrize("fn", ["count", "sum", "min", "max", "distinct", "latest"])
def test_a_window_is_empty_once_everything_has_left(fn: str) -> None:
    """Expiry empties every kind of window, so idle keys can be dropped."""
    window = SlidingWindow(fn, 60, None)
    window.add(0, 1, 0, "e0")

    window.expire(59)
    before = window.is_empty()
    window.expire(60)

    assert (before, window.is_empty()) == (False, True)


def test_recent_keeps_the_last_ten_event_ids() -> None:
    """Explanations name the events behind a value, newest last."""
    window = SlidingWindow("count", 60, None)

    for number in range(12):
        window.add(number, 1, number, f"e{number}")

    assert window.recent_ids(11) == [f"e{n}" for n in range(2, 12)]


def test_recent_ids_leave_with_their_events() -> None:
    """An explanation at time `now` names only events still in the window."""
    window = SlidingWindow("count", 60, None)

    for number in range(0, 100, 10):
        window.add(number, 1, number, f"e{number}")

    assert window.recent_ids(90) == ["e40", "e50", "e60", "e70", "e80", "e90"]
    assert window.recent_ids(200) == []


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_snapshot_and_restore_keep_the_values(case: dict[str, Any]) -> None:
    """A restored window answers exactly like the one that was saved."""
    original = filled(case)
    copy = SlidingWindow(case["fn"], case["window"], case.get("resolution"))

    copy.restore(original.snapshot())

    assert [copy.value(now) for now, _ in case["expect"]] == [
        expected for _, expected in case["expect"]
    ]


@pytest.mark.parametrize(
    ("width", "resolution"),
    [(30, 1.0), (60, 1.0), (900, 15.0), (3600, 60.0), (86400, 1440.0)],
)
def test_default_resolution_is_a_sixtieth_of_at_least_a_second(
    width: float, resolution: float
) -> None:
    """Memory per window stays at about 61 buckets whatever the width."""
    assert default_resolution(width) == resolution

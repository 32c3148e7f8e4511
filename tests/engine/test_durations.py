"""Tests of durations as rule files write them."""

from __future__ import annotations

import pytest

from engine.durations import DurationError, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30.0), ("1h30m", 5400.0), ("7d", 604800.0)],
)
def test_a_duration_is_its_seconds(text: str, seconds: float) -> None:
    """Units add up across parts."""
    assert parse_duration(text) == seconds


def test_a_duration_past_a_century_is_refused() -> None:
    """Timers stay inside the calendar timestamps can be written in."""
    assert parse_duration("5200w") == 5200 * 604800.0

    with pytest.raises(DurationError) as error:
        parse_duration("5300w")

    assert str(error.value) == (
        "'5300w' is longer than the longest duration rules may use, 100 years."
    )
    assert error.value.hint == "a window, cooldown or retention is at most 5200w"

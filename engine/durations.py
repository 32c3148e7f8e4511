"""Durations as written in rule files: `500ms`, `30s`, `5m`, `1h30m`, `7d`."""

from __future__ import annotations

import re

__all__ = ["MAX_DURATION", "DurationError", "format_duration", "parse_duration"]

# 100 years. Event times end at the year 9000 (engine/events.py), so every
# timer a rule sets falls inside the calendar that timestamps can be written in.
MAX_DURATION = 100 * 365.25 * 86400

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_WHOLE = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+$")
_WORDY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*$")
_WORD_UNITS = {
    "millisecond": "ms",
    "second": "s",
    "sec": "s",
    "minute": "m",
    "min": "m",
    "hour": "h",
    "hr": "h",
    "day": "d",
    "week": "w",
}


class DurationError(ValueError):
    """A duration is not written in the rule language's form."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


def parse_duration(text: str | int | float) -> float:
    """Return the duration in seconds.

    Raises:
        DurationError: the text is not a duration such as `5m` or `1h30m`.
    """
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise DurationError(
            f"{text!r} is not a duration.", hint="write a duration like 30s, 5m or 1h"
        )
    if isinstance(text, int | float):
        raise DurationError(
            f"{text!r} has no unit.",
            hint=f"write {text}s for seconds, {text}m for minutes",
        )
    compact = text.strip()
    if _WHOLE.match(compact):
        seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(compact))
        if seconds > MAX_DURATION:
            raise DurationError(
                f"{text!r} is longer than the longest duration rules may use, "
                "100 years.",
                hint="a window, cooldown or retention is at most 5200w",
            )
        return seconds

    wordy = _WORDY.match(compact)
    if wordy:
        number, word = wordy.groups()
        unit = _WORD_UNITS.get(word.lower().rstrip("s"))
        if unit is not None:
            raise DurationError(
                f"{text!r} is not a duration in the rule language.",
                hint=f"write {number}{unit}",
            )
    raise DurationError(
        f"{text!r} is not a duration.", hint="write a duration like 30s, 5m, 1h or 7d"
    )


def format_duration(seconds: float) -> str:
    """Format seconds in the rule language's compact form."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    remaining = int(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"

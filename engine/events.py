"""The event contract: CloudEvents 1.0 in structured JSON.

`parse_event_line` turns one line of a recorded stream (or one Pub/Sub body)
into an `Event`, or raises `EventRejected` with a stable reason code. The
checks run in the order a person would fix them: size, JSON syntax, the
envelope attributes, the time, then the type's data model.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import ValidationError

from engine.conditions import read_path
from engine.errors import EventRejected
from engine.event_data import DATA_MODELS, describe_validation_error

__all__ = [
    "MAX_EVENT_BYTES",
    "REJECT_REASONS",
    "Event",
    "event_from_mapping",
    "format_time",
    "parse_event_line",
    "parse_time",
]

MAX_EVENT_BYTES = 1024 * 1024

REJECT_REASONS = (
    "too_large",
    "invalid_json",
    "duplicate_key",
    "non_finite_number",
    "not_an_object",
    "missing_attribute",
    "wrong_type",
    "unsupported_specversion",
    "time_without_zone",
    "invalid_time",
    "invalid_data",
    "number_out_of_range",
    "too_deep",
)

_REQUIRED = ("specversion", "id", "source", "type", "time")
_OPTIONAL_STRINGS = ("subject", "datacontenttype", "dataschema")


@dataclass(slots=True)
class Event:
    """One accepted event; `ts` is its event time in epoch seconds."""

    id: str
    source: str
    type: str
    time: str
    ts: float
    data: dict[str, Any]
    subject: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def mapping(self) -> dict[str, Any]:
        """Return the attributes and data that rule paths and templates read."""
        # Built on each call: rules read `data.` paths without it, so only
        # templates and paths outside data need it.
        return {
            "id": self.id,
            "type": self.type,
            "source": self.source,
            "time": self.time,
            "subject": self.subject,
            "data": self.data,
        }

    def read(self, path: str) -> Any:
        """Return the value at a dotted path such as `data.amount`, or None."""
        if path.startswith("data."):
            rest = path[5:]
            if "." not in rest:
                return self.data.get(rest)
            return read_path(self.data, rest)
        return read_path(self.mapping(), path)

    def summary(self) -> dict[str, str]:
        """Return the trigger reference that action records carry."""
        return {"event_id": self.id, "type": self.type}

    def to_mapping(self) -> dict[str, Any]:
        """Return the event as a CloudEvents structured-mode mapping."""
        mapping: dict[str, Any] = {
            "specversion": "1.0",
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "time": self.time,
        }
        if self.subject is not None:
            mapping["subject"] = self.subject
        mapping.update(self.extra)
        mapping["data"] = self.data
        return mapping


class _DuplicateKey(ValueError):
    pass


class _NonFinite(ValueError):
    pass


def _pairs_to_dict(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return result


def _reject_constant(name: str) -> Any:
    raise _NonFinite(name)


def _reject_big_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NonFinite(text)
    return value


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class _OutOfRange(ValueError):
    pass


# Integers must fit 64 bits: the action log, Firestore and Pub/Sub encoders
# all refuse larger ones, and an event the engine cannot write out must not
# get in.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
MAX_DEPTH = 255  # what orjson can write back out


def _checked_int(text: str) -> int:
    if len(text) > 21:
        # Beyond 64 bits whatever the digits; and int() refuses more than
        # 4,300 digits with a message about interpreter limits.
        raise _OutOfRange(text)
    value = int(text)
    if not _INT_MIN <= value <= _INT_MAX:
        raise _OutOfRange(text)
    return value


def _too_deep(value: Any, depth: int) -> bool:
    if depth > MAX_DEPTH:
        return True
    if type(value) is dict:
        return any(_too_deep(item, depth + 1) for item in value.values())
    if type(value) is list:
        return any(_too_deep(item, depth + 1) for item in value)
    return False


_DECODER = json.JSONDecoder(
    object_pairs_hook=_pairs_to_dict,
    parse_constant=_reject_constant,
    parse_float=_reject_big_float,
    parse_int=_checked_int,
)


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 timestamp that carries a zone.

    RFC 3339 is stricter than ISO 8601 as `datetime.fromisoformat` reads it:
    a full date and time with seconds, an optional fraction after a dot,
    and `Z` or an offset `+HH:MM`; `T` and `Z` may be lower case, and the
    separator may be a space. Leap seconds (`:60`) are refused by name,
    since no timestamp of the engine can hold them.

    Raises:
        EventRejected: the text is not such a timestamp, or it has no zone.
    """
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = _parse_unusual_time(text)
    # fromisoformat checked the digits and ranges; what remains is the shape
    # RFC 3339 asks for. The characters at 4, 7, 10, 13, 16 and 19 are read
    # in one slice, as this runs for every event.
    if text[4:20:3] not in _SHAPES or (
        # A dot with no digits ("12:00:00.Z") reads as no fraction.
        not moment.microsecond and text[19:20] == "." and text[20:21] not in _DIGITS
    ):
        raise EventRejected(
            "invalid_time",
            f"The time {text!r} is not an RFC 3339 timestamp; write it as "
            "2024-06-01T12:00:00Z (a fraction such as .250 and an offset "
            "such as +02:00 are allowed).",
        )
    if moment.tzinfo is None:
        raise EventRejected(
            "time_without_zone",
            f"The time {text!r} has no zone; add 'Z' or an offset such as +00:00.",
        )
    if text[-1] != "Z" and not (
        text[-1] == "z"
        or (text[-6] in "+-" and text[-3] == ":" and text[-7] in _DIGITS)
    ):
        raise EventRejected(
            "invalid_time",
            f"The time {text!r} is not an RFC 3339 timestamp; its offset must "
            "be Z or +HH:MM.",
        )
    return moment


# "YYYY-MM-DDTHH:MM:SS" and what may follow the seconds: a fraction, a
# zone, or nothing (then the zone is missing, which is its own rejection).
_SHAPES = frozenset(
    f"--{separator}::{after}" for separator in "Tt " for after in ("", *".Zz+-")
)
_DIGITS = frozenset("0123456789")


def _parse_unusual_time(text: str) -> datetime:
    """Parse what fromisoformat refuses but RFC 3339 allows, or reject it."""
    if text[10:11] in ("t", "T", " ") and text[-1:] in ("z", "Z"):
        # Lower-case `t` and `z`.
        try:
            return datetime.fromisoformat(text[:10] + "T" + text[11:-1] + "+00:00")
        except ValueError:
            pass
    elif text[10:11] == "t":
        try:
            return datetime.fromisoformat(text[:10] + "T" + text[11:])
        except ValueError:
            pass
    if text[16:19] == ":60":
        raise EventRejected(
            "invalid_time",
            f"The time {text!r} is a leap second, which the engine cannot "
            "represent; use :59.999 instead.",
        )
    raise EventRejected(
        "invalid_time", f"The time {text!r} is not an RFC 3339 timestamp."
    )


def format_time(ts: float) -> str:
    """Format epoch seconds as RFC 3339 UTC with millisecond precision."""
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_event_line(line: bytes | str) -> Event:
    """Parse and check one structured-mode CloudEvent.

    Raises:
        EventRejected: the line is not an acceptable event; `reason` says why.
    """
    raw = line.encode() if isinstance(line, str) else line
    size = len(raw)
    if size > MAX_EVENT_BYTES and (size := len(raw.rstrip(b"\r\n"))) > MAX_EVENT_BYTES:
        # The limit is on the event; a line end read with it does not count.
        raise EventRejected(
            "too_large",
            f"The event is {size} bytes; the limit is {MAX_EVENT_BYTES} bytes.",
        )

    # Fast path: orjson refuses NaN and Infinity itself but keeps the last of
    # two equal keys. A line that is byte for byte the re-encoding of what
    # orjson read cannot repeat a key, since the encoding never does; any
    # other line (spaces, escapes, other number forms, a repeated key) takes
    # the strict decoder, which names the problem. A line read from a file
    # keeps its "\n", which the re-encoding then appends too (no copy).
    try:
        mapping = orjson.loads(raw)
        if raw[-1:] == b"\n":
            encoded = orjson.dumps(mapping, option=orjson.OPT_APPEND_NEWLINE)
        else:
            encoded = orjson.dumps(mapping)
        if encoded == raw:
            return event_from_mapping(mapping)
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        # Decode errors, and nesting too deep or integers too large to
        # re-encode: the strict decoder gives the reason.
        pass

    try:
        text = line.decode() if isinstance(line, bytes) else line
        # A byte order mark (some editors write one on the first line) is
        # not part of the event; RFC 8259 lets a reader ignore it.
        mapping = _DECODER.decode(text.removeprefix("\ufeff"))
    except _DuplicateKey as error:
        raise EventRejected(
            "duplicate_key", f"The key {error.args[0]!r} appears twice in one object."
        ) from error
    except _NonFinite as error:
        raise EventRejected(
            "non_finite_number",
            f"The number {error.args[0]} is not finite; JSON events carry finite "
            "numbers only.",
        ) from error
    except _OutOfRange as error:
        raise EventRejected(
            "number_out_of_range",
            f"The integer {error.args[0][:40]} is outside the 64-bit range events "
            "may carry.",
        ) from error
    except RecursionError as error:
        raise EventRejected(
            "too_deep", "The event nests objects or lists too deeply."
        ) from error
    except (UnicodeDecodeError, ValueError) as error:
        raise EventRejected(
            "invalid_json", f"The line is not valid JSON: {error}."
        ) from error
    if _too_deep(mapping, 0):
        raise EventRejected(
            "too_deep",
            f"The event nests objects or lists deeper than {MAX_DEPTH} levels.",
        )

    # The strict decoder turns an escaped lone surrogate (\ud800) into a
    # string that is not Unicode text, which every encoder downstream (the
    # actions file, Pub/Sub) refuses; orjson refused it on the fast path.
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(mapping, ensure_ascii=False).encode()
        except UnicodeEncodeError as error:
            raise EventRejected(
                "invalid_json",
                "The line escapes a lone UTF-16 surrogate (\\ud800 to "
                "\\udfff), which is not a character.",
            ) from error

    return event_from_mapping(mapping)


def _check_envelope(mapping: dict[str, Any]) -> None:
    """Raise the precise rejection for a mapping that failed the fast check."""
    for name in _REQUIRED:
        value = mapping.get(name)
        if value is None:
            raise EventRejected(
                "missing_attribute", f"The event lacks the required attribute {name!r}."
            )
        if value == "":
            raise EventRejected(
                "wrong_type", f"The attribute {name!r} is empty; it must not be."
            )
        if not isinstance(value, str):
            raise EventRejected(
                "wrong_type",
                f"The attribute {name!r} must be a non-empty string, "
                f"not {type(value).__name__}.",
            )
    if mapping["specversion"] != "1.0":
        raise EventRejected(
            "unsupported_specversion",
            f"The specversion {mapping['specversion']!r} is not supported; use '1.0'.",
        )


def event_from_mapping(mapping: Any) -> Event:
    """Check a decoded CloudEvent mapping and build an `Event`.

    Raises:
        EventRejected: an attribute is missing or wrong, or the data is invalid.
    """
    if type(mapping) is not dict:
        raise EventRejected(
            "not_an_object",
            "The event is not a JSON object; each line holds one event.",
        )

    # Envelope attributes: one cheap test for the common case, the precise
    # diagnosis only when it fails.
    get = mapping.get
    # Any: these are checked just below, once, for all four together.
    event_id: Any = get("id")
    source: Any = get("source")
    event_type: Any = get("type")
    time_text: Any = get("time")
    if not (
        get("specversion") == "1.0"
        and type(event_id) is str
        and type(source) is str
        and type(event_type) is str
        and type(time_text) is str
        and event_id
        and source
        and event_type
        and time_text
    ):
        _check_envelope(mapping)
    # Anything beyond the five required attributes and data: check the
    # optional ones and keep the extensions. Most events have none.
    subject = None
    extra: dict[str, Any] = {}
    if len(mapping) > 5 + ("data" in mapping):
        subject = get("subject")
        for name in _OPTIONAL_STRINGS:
            value = get(name)
            if value is not None and type(value) is not str:
                raise EventRejected(
                    "wrong_type",
                    f"The attribute {name!r} must be a string when present.",
                )
        extra = {k: v for k, v in mapping.items() if k not in _ENVELOPE}

    moment = parse_time(time_text)
    data = get("data")
    if data is None:
        data = {}
    elif type(data) is not dict:
        raise EventRejected(
            "wrong_type", "The attribute 'data' must be a JSON object when present."
        )

    # Data of a known type
    validator = _VALIDATORS.get(event_type)
    if validator is not None:
        try:
            validator(data)
        except ValidationError as error:
            detail = describe_validation_error(error.errors())  # type: ignore[arg-type]
            raise EventRejected(
                "invalid_data",
                f"The data of a {event_type} event is invalid: {detail}.",
            ) from error

    ts = moment.timestamp()
    if not _MIN_TS <= ts < _MAX_TS:
        raise EventRejected(
            "invalid_time",
            f"The time {time_text!r} is outside the years 0001 to 8999 (UTC) "
            "that event times may take.",
        )
    # Positional: keywords cost measurably on the hot path.
    return Event(
        event_id,
        source,
        event_type,
        time_text,
        ts,
        data,
        subject,
        extra,
    )


_ENVELOPE = frozenset((*_REQUIRED, "data", "subject"))
# Event times: from 0001-01-01 to 9000-01-01 UTC. The upper end leaves a
# century for the timers rules set (durations are at most 100 years), so
# that every time the engine writes is a valid RFC 3339 timestamp.
_MIN_TS = datetime(1, 1, 1, tzinfo=UTC).timestamp()
_MAX_TS = datetime(9000, 1, 1, tzinfo=UTC).timestamp()
# The core validators: the TypeAdapter method around them costs as much again.
_VALIDATORS = {
    name: adapter.validator.validate_python for name, adapter in DATA_MODELS.items()
}

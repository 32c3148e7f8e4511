"""Tests of the event contract: which lines become events, and why not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.errors import EventRejected
from engine.events import (
    MAX_EVENT_BYTES,
    REJECT_REASONS,
    event_from_mapping,
    format_time,
    parse_event_line,
    parse_time,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "events"
VALID = yaml.safe_load((FIXTURES / "valid.yaml").read_text())
REJECTED = yaml.safe_load((FIXTURES / "rejected.yaml").read_text())


def compact(mapping: Any) -> str:
    """Write a mapping as one compact JSON line, as producers do."""
    return json.dumps(mapping, separators=(",", ":"), ensure_ascii=False)


def rejected_line(case: dict[str, Any]) -> str:
    """Return the line of a rejection case: raw, or the base event changed."""
    if "line" in case:
        return str(case["line"])
    mapping = dict(REJECTED["base"])
    mapping.update(case.get("set", {}))
    for name in case.get("drop", []):
        del mapping[name]
    return compact(mapping)


def sized_event(size: int) -> bytes:
    """Return a valid generic event padded to exactly `size` bytes."""
    head = (
        '{"specversion":"1.0","id":"big","source":"/s","type":"blob.stored",'
        '"time":"2024-06-01T12:00:00Z","data":{"pad":"'
    )
    tail = '"}}'
    padding = size - len(head) - len(tail)
    return (head + "x" * padding + tail).encode()


# Accepted events


@pytest.mark.parametrize("case", VALID["cases"], ids=lambda c: c["name"])
def test_valid_events_are_accepted_with_their_attributes(case: dict[str, Any]) -> None:
    """A valid event keeps its envelope, event time, data and extensions."""
    mapping = case["event"]

    event = parse_event_line(case.get("line") or compact(mapping))

    assert event.id == mapping["id"]
    assert event.source == mapping["source"]
    assert event.type == mapping["type"]
    assert event.time == mapping["time"]
    assert event.ts == case["ts"]
    assert event.data == case.get("data", mapping.get("data"))
    assert event.subject == case.get("subject")
    assert event.extra == case.get("extra", {})


@pytest.mark.parametrize("case", VALID["cases"], ids=lambda c: c["name"])
def test_bytes_and_text_lines_give_the_same_event(case: dict[str, Any]) -> None:
    """A line read from a file (bytes) parses exactly like the same text."""
    line = case.get("line") or compact(case["event"])

    assert parse_event_line(line.encode()) == parse_event_line(line)


def test_spaced_json_is_accepted_like_compact_json() -> None:
    """Whitespace between tokens does not change the event."""
    mapping = VALID["cases"][0]["event"]

    spaced = parse_event_line(json.dumps(mapping, indent=2))

    assert spaced == parse_event_line(compact(mapping))


def test_to_mapping_gives_back_the_structured_event() -> None:
    """An event written back out is the CloudEvent it was read from."""
    mapping = {
        "specversion": "1.0",
        "id": "e-1",
        "source": "/s",
        "type": "shop.opened",
        "time": "2024-06-01T12:00:00Z",
        "subject": "shops/1",
        "tenant": "acme",
        "data": {"open": True},
    }

    assert parse_event_line(compact(mapping)).to_mapping() == mapping


def test_a_line_of_exactly_the_limit_is_accepted() -> None:
    """The size limit is inclusive: 1 MiB exactly still parses."""
    line = sized_event(MAX_EVENT_BYTES)

    event = parse_event_line(line)

    assert len(line) == MAX_EVENT_BYTES
    assert len(event.data["pad"]) > MAX_EVENT_BYTES - 200


@pytest.mark.parametrize("end", [b"\n", b"\r\n"])
def test_the_line_end_does_not_count_towards_the_limit(end: bytes) -> None:
    """An event of exactly 1 MiB read from a file, line end kept, parses."""
    event = parse_event_line(sized_event(MAX_EVENT_BYTES) + end)

    assert event.id == "big"


def test_one_byte_over_the_limit_is_too_large_whatever_the_line_end() -> None:
    """The limit is on the event's bytes."""
    with pytest.raises(EventRejected) as caught:
        parse_event_line(sized_event(MAX_EVENT_BYTES + 1) + b"\n")

    assert caught.value.reason == "too_large"
    assert str(caught.value) == (
        f"The event is {MAX_EVENT_BYTES + 1} bytes; the limit is "
        f"{MAX_EVENT_BYTES} bytes."
    )


# Rejected lines


@pytest.mark.parametrize("case", REJECTED["cases"], ids=lambda c: c["name"])
def test_bad_lines_are_rejected_with_their_reason(case: dict[str, Any]) -> None:
    """Each kind of bad input has its stable reason and a readable message."""
    with pytest.raises(EventRejected) as caught:
        parse_event_line(rejected_line(case))

    assert caught.value.reason == case["reason"]
    assert case["message"] in str(caught.value)


@pytest.mark.parametrize("extra", [1, 1000])
def test_a_line_over_the_limit_is_too_large(extra: int) -> None:
    """A line longer than 1 MiB is refused before it is decoded."""
    with pytest.raises(EventRejected) as caught:
        parse_event_line(sized_event(MAX_EVENT_BYTES + extra))

    assert caught.value.reason == "too_large"
    assert f"the limit is {MAX_EVENT_BYTES} bytes" in str(caught.value)


def test_the_limit_counts_bytes_not_characters() -> None:
    """Multi-byte characters count by their UTF-8 size."""
    line = sized_event(MAX_EVENT_BYTES).decode().replace("x", "\u00e9", 1)

    with pytest.raises(EventRejected) as caught:
        parse_event_line(line)

    assert len(line) == MAX_EVENT_BYTES
    assert caught.value.reason == "too_large"


def test_bytes_that_are_not_utf8_are_invalid_json() -> None:
    """A line that does not decode as UTF-8 is rejected, not raised."""
    with pytest.raises(EventRejected) as caught:
        parse_event_line(b'{"id": "\xff\xfe"}')

    assert caught.value.reason == "invalid_json"


def test_every_reason_code_has_a_case() -> None:
    """The fixture and the size tests cover every reason the contract names."""
    covered = {case["reason"] for case in REJECTED["cases"]} | {"too_large"}

    assert covered == set(REJECT_REASONS)


@pytest.mark.parametrize("value", [[], "event", 7, None])
def test_event_from_mapping_refuses_anything_but_a_dict(value: Any) -> None:
    """Decoded Pub/Sub bodies go through the same object check."""
    with pytest.raises(EventRejected) as caught:
        event_from_mapping(value)

    assert caught.value.reason == "not_an_object"


# Time


@pytest.mark.parametrize(
    ("text", "ts"),
    [
        ("2024-06-01T12:00:00Z", 1717243200.0),
        ("2024-06-01T12:00:00+00:00", 1717243200.0),
        ("2024-06-01T14:00:00+02:00", 1717243200.0),
        ("2024-06-01T07:00:00-05:00", 1717243200.0),
        ("2024-06-01T12:00:00.125Z", 1717243200.125),
        ("1970-01-01T00:00:00Z", 0.0),
    ],
)
def test_parse_time_reads_zoned_timestamps(text: str, ts: float) -> None:
    """Every zone is honoured; the result is the same instant."""
    assert parse_time(text).timestamp() == ts


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (1717243200.0, "2024-06-01T12:00:00.000Z"),
        (1717243200.125, "2024-06-01T12:00:00.125Z"),
        (0.0, "1970-01-01T00:00:00.000Z"),
    ],
)
def test_format_time_writes_utc_with_milliseconds(ts: float, text: str) -> None:
    """Times written by the engine are UTC with a Z and three decimals."""
    assert format_time(ts) == text

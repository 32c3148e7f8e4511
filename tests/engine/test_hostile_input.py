"""Inputs crafted to break the engine are rejected with a reason instead."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import orjson
import pytest

from engine.errors import EventRejected
from engine.events import parse_event_line
from engine.loader import check_rules, load_rules
from engine.replay import ReplayIncomplete, replay_stream

ROOT = Path(__file__).resolve().parents[2]
ENVELOPE = '"specversion":"1.0","source":"/s","type":"t","time":"2015-03-01T00:00:00Z"'

HOSTILE_EVENTS = [
    (
        "a repeated id hidden by a number that re-encodes longer",
        '{"specversion":"1.0","id":"AAAA","id":"evil","source":"/s","type":"t",'
        '"time":"2015-03-01T00:00:00Z","data":{"v":1e7,"w":1e5}}',
        "duplicate_key",
    ),
    (
        "nesting deeper than can be written back out",
        '{"id":"a",' + ENVELOPE + ',"data":{"x":' + "[" * 300 + "]" * 300 + "}}",
        "too_deep",
    ),
    (
        "nesting deeper than the parser recurses",
        '{"id":"a",' + ENVELOPE + ',"data":{"x":' + "[" * 3000 + "]" * 3000 + "}}",
        "too_deep",
    ),
    (
        "an integer beyond 64 bits",
        '{"id":"a",' + ENVELOPE + ',"data":{"x":123456789012345678901234567890}}',
        "number_out_of_range",
    ),
]


@pytest.mark.parametrize(
    ("line", "reason"),
    [(line, reason) for _, line, reason in HOSTILE_EVENTS],
    ids=[name for name, _, _ in HOSTILE_EVENTS],
)
def test_hostile_events_are_rejected_with_their_reason(line: str, reason: str) -> None:
    """Each crafted line is refused with the reason that names its problem."""
    with pytest.raises(EventRejected) as caught:
        parse_event_line(line.encode())

    assert caught.value.reason == reason


def test_a_far_future_event_cannot_make_the_rest_late(tmp_path: Path) -> None:
    """One event a century ahead is rejected; the stream's actions are unchanged."""
    contributions = [
        f'{{"id":"c{n}","specversion":"1.0","source":"/s",'
        f'"type":"contribution.created","time":"2015-03-01T00:00:{n:02d}Z",'
        f'"data":{{"contributionId":"c{n}","projectId":"p","contributorUid":"u",'
        '"amount":5,"currency":"EUR"}}'
        for n in range(55)
    ]
    attack = '{"id":"x",' + ENVELOPE.replace("2015", "2099") + ',"data":{}}'
    clean, poisoned = tmp_path / "clean.jsonl", tmp_path / "poisoned.jsonl"
    clean.write_text("\n".join(contributions) + "\n")
    poisoned.write_text("\n".join([*contributions[:5], attack, *contributions[5:]]))
    rules = load_rules(ROOT / "rules")

    expected = replay_stream(clean, rules)
    summary = replay_stream(poisoned, rules)

    assert dict(summary.rejected) == {"time_jump": 1}
    assert summary.read == summary.accepted + 1
    assert summary.engine.fires == expected.engine.fires
    assert summary.engine.fires["scale-payments-on-contribution-burst"] == 1


def _shop(number: int, time: str) -> str:
    return (
        f'{{"id":"e{number}","specversion":"1.0","source":"/s","type":"shop.opened",'
        f'"time":"{time}"}}'
    )


def _dead_letters(path: Path) -> list[tuple[int, str]]:
    entries = [orjson.loads(text) for text in path.read_text().splitlines()]
    return [(entry["line"], entry["reason"]) for entry in entries]


@pytest.mark.parametrize(
    ("times", "rejected_lines"),
    [
        # A default-zero stamp at the head: the clock was the outlier.
        (["1970-01-01T00:00:00Z"] + [f"2024-06-01T00:00:0{n}Z" for n in range(6)], []),
        # Two far-future events among good ones: both outliers.
        (
            [
                "2024-06-01T00:00:00Z",
                "2099-01-01T00:00:00Z",
                "2099-01-01T00:00:01Z",
                "2024-06-01T00:00:01Z",
                "2024-06-01T00:00:02Z",
            ],
            [2, 3],
        ),
        # Three far-future events that do not agree with one another.
        (
            [
                "2024-06-01T00:00:00Z",
                "2099-01-01T00:00:00Z",
                "2199-01-01T00:00:00Z",
                "2299-01-01T00:00:00Z",
                "2024-06-01T00:00:01Z",
            ],
            [2, 3, 4],
        ),
        # One far-future event at the very end is settled as an outlier.
        (["2024-06-01T00:00:00Z", "2024-06-01T00:00:01Z", "2099-01-01T00:00:00Z"], [3]),
    ],
    ids=["clock outlier at the head", "two outliers", "disagreeing", "at the end"],
)
def test_a_time_jump_needs_three_agreeing_events(
    tmp_path: Path, times: list[str], rejected_lines: list[int]
) -> None:
    """Three agreeing events move the clock; fewer are rejected as outliers."""
    stream, dead = tmp_path / "s.jsonl", tmp_path / "dead.jsonl"
    stream.write_text("".join(_shop(n, t) + "\n" for n, t in enumerate(times)))
    rules = load_rules(ROOT / "rules")

    with dead.open("wb") as dead_out:
        summary = replay_stream(stream, rules, dead_letter_out=dead_out)

    assert _dead_letters(dead) == [(line, "time_jump") for line in rejected_lines]
    assert (summary.read, summary.accepted) == (
        len(times),
        len(times) - len(rejected_lines),
    )


def test_a_rejected_time_jump_does_not_make_the_engine_forget_seen_ids(
    tmp_path: Path,
) -> None:
    """A redelivery after a far-future outlier is still a duplicate."""
    stream = tmp_path / "s.jsonl"
    lines = [
        _shop(1, "2024-06-01T12:00:00Z"),
        _shop(2, "2024-07-15T12:00:00Z"),
        _shop(1, "2024-06-01T12:00:01Z"),
        _shop(3, "2024-06-01T12:00:10Z"),
    ]
    stream.write_text("".join(line + "\n" for line in lines))

    summary = replay_stream(stream, load_rules(ROOT / "rules"))

    assert dict(summary.rejected) == {"time_jump": 1}
    assert (summary.read, summary.accepted, summary.engine.duplicates) == (4, 3, 1)


def test_a_time_jump_is_told_in_the_rule_language_s_durations(tmp_path: Path) -> None:
    """The dead letter names the bound as rules write it (30d)."""
    stream, dead = tmp_path / "s.jsonl", tmp_path / "dead.jsonl"
    times = ["2024-06-01T00:00:00Z", "2099-01-01T00:00:00Z", "2024-06-01T00:00:01Z"]
    stream.write_text("".join(_shop(n, t) + "\n" for n, t in enumerate(times)))

    with dead.open("wb") as dead_out:
        replay_stream(stream, load_rules(ROOT / "rules"), None, dead_out)

    (entry,) = [orjson.loads(text) for text in dead.read_text().splitlines()]
    assert entry["error"] == (
        "The event time 2099-01-01T00:00:00Z is more than 30d ahead of the "
        "engine's clock (2024-06-01T00:00:00.000Z); one such event would make "
        "every later one late."
    )


def test_lines_of_json_whitespace_are_blank_and_others_are_rejected(
    tmp_path: Path,
) -> None:
    """Spaces, tabs and CRs alone are blank lines; a vertical tab is not JSON."""
    stream, dead = tmp_path / "s.jsonl", tmp_path / "dead.jsonl"
    good = _shop(0, "2024-06-01T00:00:00Z")
    stream.write_bytes(
        f"{good}\n \n   \n\t \r\n\x0b\n".encode()
        + _shop(1, "2024-06-01T00:00:01Z").encode()
    )

    with dead.open("wb") as dead_out:
        summary = replay_stream(stream, load_rules(ROOT / "rules"), None, dead_out)

    assert (summary.read, summary.accepted) == (3, 2)
    assert _dead_letters(dead) == [(5, "invalid_json")]


def test_a_truncated_gzip_stream_keeps_every_whole_line(tmp_path: Path) -> None:
    """Lines before the damage are processed; the error carries the summary."""
    lines = [
        _shop(n, f"2024-06-01T00:{n // 60:02d}:{n % 60:02d}Z") for n in range(3000)
    ]
    packed = gzip.compress(("\n".join(lines) + "\n").encode())
    stream = tmp_path / "s.jsonl.gz"
    stream.write_bytes(packed[: len(packed) // 2])
    readable, partial = _recoverable(packed[: len(packed) // 2])
    assert partial  # the cut falls inside a line

    with pytest.raises(ReplayIncomplete) as caught:
        replay_stream(stream, load_rules(ROOT / "rules"))

    summary = caught.value.summary
    assert (summary.read, summary.accepted) == (readable + 1, readable)
    assert dict(summary.rejected) == {"truncated": 1}
    assert f"could not be read past line {readable + 1}, which is cut short" in str(
        caught.value
    )


def _recoverable(truncated: bytes) -> tuple[int, bytes]:
    """Return the complete lines zlib recovers from a truncated gzip, and the rest."""
    text = zlib.decompressobj(wbits=31).decompress(truncated)
    return text.count(b"\n"), text[text.rfind(b"\n") + 1 :]


def _gzip_ending_after(text: bytes) -> bytes:
    """Return a gzip stream that holds `text`, then ends without its trailer."""
    packer = zlib.compressobj(wbits=31)
    return packer.compress(text) + packer.flush(zlib.Z_SYNC_FLUSH)


_E0, _E1 = _shop(0, "2024-06-01T00:00:00Z"), _shop(1, "2024-06-01T00:00:01Z")
_LONG = '{"id":"' + "x" * (3 << 20)

# The text a truncated gzip holds; the lines read, accepted and dead-lettered
# (line, reason); and how the error says where reading stopped.
TRUNCATED_GZIP_CASES = [
    (
        "a cut inside an event, after a blank line",
        f"{_E0}\n\n{_E1}\n{_E1[:20]}",
        (3, 2, [(4, "truncated")]),
        "could not be read past line 4, which is cut short and rejected as truncated",
    ),
    (
        "a cut just before a line end: the event may be whole, but is not known",
        f"{_E0}\n{_E1}",
        (2, 1, [(2, "truncated")]),
        "could not be read past line 2, which is cut short and rejected as truncated",
    ),
    (
        "a cut inside the first line",
        _E0[:5],
        (1, 0, [(1, "truncated")]),
        "could not be read past line 1, which is cut short and rejected as truncated",
    ),
    (
        "a cut line longer than the search from a read's end",
        f"{_E0}\n" + '{"id":"' + "x" * 5000,
        (2, 1, [(2, "truncated")]),
        "could not be read past line 2, which is cut short and rejected as truncated",
    ),
    (
        "a cut line longer than one read",
        f"{_E0}\n{_LONG}",
        (2, 1, [(2, "truncated")]),
        "could not be read past line 2, which is cut short and rejected as truncated",
    ),
    (
        "a cut at a line end",
        f"{_E0}\n{_E1}\n",
        (2, 2, []),
        "could not be read after line 2",
    ),
    (
        "a cut after spaces, which make no line",
        f"{_E0}\n  ",
        (1, 1, []),
        "could not be read after line 1",
    ),
]


@pytest.mark.parametrize(
    ("text", "counts", "stopped"),
    [case[1:] for case in TRUNCATED_GZIP_CASES],
    ids=[case[0] for case in TRUNCATED_GZIP_CASES],
)
def test_a_line_a_truncated_gzip_cuts_short_is_read_and_rejected(
    tmp_path: Path,
    text: str,
    counts: tuple[int, int, list[tuple[int, str]]],
    stopped: str,
) -> None:
    """The cut line is counted, dead-lettered as truncated, and named."""
    stream, dead = tmp_path / "s.jsonl.gz", tmp_path / "dead.jsonl"
    stream.write_bytes(_gzip_ending_after(text.encode()))

    with dead.open("wb") as dead_out, pytest.raises(ReplayIncomplete) as caught:
        replay_stream(stream, load_rules(ROOT / "rules"), None, dead_out)

    summary = caught.value.summary
    read, accepted, dead_letters = counts
    assert (summary.read, summary.accepted) == (read, accepted)
    assert summary.rejected_total == len(dead_letters)
    assert _dead_letters(dead) == dead_letters
    assert str(caught.value) == (
        f"The event file '{stream}' {stopped}: Compressed file ended before the "
        "end-of-stream marker was reached."
    )


def test_a_truncated_gzip_dead_letters_the_cut_line_as_read(tmp_path: Path) -> None:
    """The dead letter holds the cut line's bytes and says why it is refused."""
    stream, dead = tmp_path / "s.jsonl.gz", tmp_path / "dead.jsonl"
    stream.write_bytes(_gzip_ending_after(f"{_E0}\n{_E1[:30]}".encode()))

    with dead.open("wb") as dead_out, pytest.raises(ReplayIncomplete):
        replay_stream(stream, load_rules(ROOT / "rules"), None, dead_out)

    assert [orjson.loads(text) for text in dead.read_text().splitlines()] == [
        {
            "line": 2,
            "reason": "truncated",
            "error": "The line is cut short: the file could not be read past "
            "it, so it is not a whole event.",
            "raw": _E1[:30],
        }
    ]


def test_a_plain_stream_cut_inside_its_last_line_rejects_that_line(
    tmp_path: Path,
) -> None:
    """A last line without its line end that is not whole JSON is rejected."""
    stream, dead = tmp_path / "s.jsonl", tmp_path / "dead.jsonl"
    stream.write_text(f"{_E0}\n\n{_E1[:20]}")

    with dead.open("wb") as dead_out:
        summary = replay_stream(stream, load_rules(ROOT / "rules"), None, dead_out)

    assert (summary.read, summary.accepted) == (2, 1)
    assert dict(summary.rejected) == {"invalid_json": 1}
    assert _dead_letters(dead) == [(3, "invalid_json")]


HOSTILE_RULE_FILES = [
    ("a NUL byte", "rules:\n  - name: a\x00b\n", "character YAML does not allow"),
    (
        "an escaped lone surrogate",
        'rules:\n  - name: "a\\ud800"\n',
        "escapes a lone UTF-16 surrogate",
    ),
    ("nesting thousands deep", "rules: " + "[" * 5000 + "]" * 5000, "too deeply"),
    (
        "an alias bomb",
        "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{name}: &{name} [{', '.join([f'*{previous}'] * 10)}]\n"
            for previous, name in zip("abcdefg", "bcdefgh", strict=True)
        )
        + "rules: []\n",
        "more than 100000 values",
    ),
]


@pytest.mark.parametrize(
    ("text", "message"),
    [(text, message) for _, text, message in HOSTILE_RULE_FILES],
    ids=[name for name, _, _ in HOSTILE_RULE_FILES],
)
def test_hostile_rule_files_are_problems_not_crashes(
    tmp_path: Path, text: str, message: str
) -> None:
    """A hostile rule file is reported as a problem of that file."""
    (tmp_path / "rules.yaml").write_text(text)

    ruleset, problems = check_rules(tmp_path)

    assert ruleset is None
    assert len(problems) == 1
    assert problems[0].file.endswith("rules.yaml")
    assert message in problems[0].message

"""Tests of replaying a recorded stream: the golden stream and accounting.

tests/fixtures/streams/README.md explains, line by line, why each action
of golden-actions.jsonl is expected.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pytest

from engine.loader import RuleSet, load_rules
from engine.replay import ReplaySummary, replay_stream

STREAMS = Path(__file__).parents[1] / "fixtures" / "streams"
GOLDEN = STREAMS / "golden.jsonl"
EXPECTED = STREAMS / "golden-actions.jsonl"
SHIPPED = Path(__file__).parents[2] / "rules"


@pytest.fixture(scope="module")
def ruleset() -> RuleSet:
    """The shipped rules, loaded once."""
    return load_rules(SHIPPED)


def replay(path: Path, ruleset: RuleSet) -> tuple[bytes, bytes, ReplaySummary]:
    """Replay a stream; return the actions, the dead letters and the summary."""
    actions, dead = io.BytesIO(), io.BytesIO()
    summary = replay_stream(path, ruleset, actions_out=actions, dead_letter_out=dead)
    return actions.getvalue(), dead.getvalue(), summary


def test_the_golden_stream_gives_the_golden_actions(ruleset: RuleSet) -> None:
    """Every action, its time, parameters, result and reasons, byte for byte."""
    actions, _, _ = replay(GOLDEN, ruleset)

    assert actions == EXPECTED.read_bytes()


def test_a_second_replay_gives_the_same_bytes(ruleset: RuleSet) -> None:
    """Same stream and rules, same output: nothing depends on the wall clock."""
    first = replay(GOLDEN, ruleset)
    second = replay(GOLDEN, ruleset)

    assert first[0] == second[0]
    assert first[1] == second[1]


def test_every_line_read_is_accepted_or_rejected(ruleset: RuleSet) -> None:
    """accepted + rejected == read, with the counts the README gives."""
    _, _, summary = replay(GOLDEN, ruleset)
    lines = GOLDEN.read_bytes().splitlines()

    assert summary.read == len(lines) == 36
    assert summary.accepted + summary.rejected_total == summary.read
    assert (summary.accepted, summary.rejected_total) == (31, 5)
    assert summary.engine.duplicates == 1
    assert summary.engine.processed == 30
    assert summary.engine.emitted == 1


def test_dead_letters_carry_line_reason_error_and_raw_text(ruleset: RuleSet) -> None:
    """Each rejected line is written with its number, reason and text."""
    _, dead, summary = replay(GOLDEN, ruleset)
    entries = [json.loads(line) for line in dead.splitlines()]
    lines = GOLDEN.read_text().splitlines()

    assert [(e["line"], e["reason"]) for e in entries] == [
        (8, "invalid_json"),
        (9, "invalid_data"),
        (10, "time_without_zone"),
        (11, "duplicate_key"),
        (12, "non_finite_number"),
    ]
    assert [e["raw"] for e in entries] == [lines[e["line"] - 1] for e in entries]
    assert entries[1]["error"] == (
        "The data of a contribution.created event is invalid: data.currency: "
        "'EURO' is not an ISO 4217 currency code."
    )
    assert dict(summary.rejected) == {
        "invalid_json": 1,
        "invalid_data": 1,
        "time_without_zone": 1,
        "duplicate_key": 1,
        "non_finite_number": 1,
    }


def test_a_gzipped_stream_with_blank_lines_replays_the_same(
    ruleset: RuleSet, tmp_path: Path
) -> None:
    """Streams may be gzipped; blank lines and CRLF endings are not events."""
    text = GOLDEN.read_bytes().replace(b"\n", b"\r\n\n")
    packed = tmp_path / "golden.jsonl.gz"
    packed.write_bytes(gzip.compress(text))

    actions, _, summary = replay(packed, ruleset)

    assert actions == EXPECTED.read_bytes()
    assert summary.read == 36


def test_the_summary_counts_fires_actions_and_coalescing(ruleset: RuleSet) -> None:
    """The summary agrees with the golden actions."""
    _, _, summary = replay(GOLDEN, ruleset)
    data = summary.to_mapping()

    assert data["actions_by_handler"] == {
        "change_tier:ok": 1,
        "invalidate_cache:ok": 10,
        "notify:ok": 12,
        "scale:ok": 1,
    }
    # ctb-2 gave way to ctb-3 within the minute of stats purges.
    assert data["coalesced_by_rule"] == {"invalidate-stats": 1}
    # Each firing (one action each) ran or was coalesced.
    assert sum(data["fires_by_rule"].values()) == 24 + 1

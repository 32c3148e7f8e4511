"""Tests of comparing two rule sets on one recorded stream."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.actions import ActionRecord, Explanation
from engine.cli import main
from engine.csv_import import CountMode, ImportOptions, import_csv, parse_timestamp
from engine.loader import load_rules
from engine.rule_diff import RuleSetDiff, diff_actions, diff_rule_sets

ROOT = Path(__file__).parents[2]
AMZN = ROOT / "data" / "nab" / "data" / "realTweets" / "Twitter_volume_AMZN.csv"
BURST = "scale-payments-on-contribution-burst"


@pytest.fixture(scope="module")
def day_stream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One day of the AMZN tweet counts as contributions: 18,956 events.

    On 2015-03-03 the busiest 5-minute buckets hold up to 242 tweets, about
    48 a minute: under the shipped threshold of 50, over a threshold of 30.
    """
    out = tmp_path_factory.mktemp("stream") / "amzn-2015-03-03.jsonl"
    options = ImportOptions(
        event_type="contribution.created",
        start_ms=parse_timestamp("2015-03-03 00:00:00"),
        end_ms=parse_timestamp("2015-03-04 00:00:00"),
    )
    import_csv(AMZN, out, CountMode(), options)
    return out


@pytest.fixture(scope="module")
def lower_threshold(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of rules/ whose burst threshold is 30 instead of 50.

    clear_below moves from 40 to 25 with it, since a re-arm bound above the
    threshold is refused by the loader.
    """
    copy = tmp_path_factory.mktemp("rules") / "rules"
    shutil.copytree(ROOT / "rules", copy, ignore=shutil.ignore_patterns("tests"))
    scaling = copy / "scaling.yaml"
    text = scaling.read_text(encoding="utf-8")
    old = "threshold: {above: 50, clear_below: 40}"
    assert text.count(old) == 1
    scaling.write_text(
        text.replace(old, "threshold: {above: 30, clear_below: 25}"), encoding="utf-8"
    )
    return copy


@pytest.fixture(scope="module")
def diff(day_stream: Path, lower_threshold: Path) -> RuleSetDiff:
    return diff_rule_sets(
        day_stream, load_rules(ROOT / "rules"), load_rules(lower_threshold)
    )


def test_a_lower_threshold_adds_exactly_the_new_scale_fires(
    diff: RuleSetDiff,
) -> None:
    """The one new firing is added; every other action is unchanged."""
    changed = {name: rule for name, rule in diff.rules.items() if rule.differs}

    assert list(changed) == [BURST]
    (added,) = changed[BURST].added
    assert added.to_mapping() | {"id": "", "why": {}} == {
        "at": "2015-03-03T17:03:31.571Z",
        "rule": BURST,
        "action": "scale",
        "params": {
            "target": "payment-functions",
            "factor": 2,
            "reason": "31 contributions in the last minute",
        },
        "trigger": {"event_id": "csv-001384-00022", "type": "contribution.created"},
        "id": "",
        "outcome": "ok",
        "result": {"previous": 1, "replicas": 2, "min": 1, "max": 10},
        "why": {},
    }
    assert changed[BURST].removed == []
    assert changed[BURST].changed == []
    assert changed[BURST].unchanged == 0


def test_both_replays_read_the_same_events(diff: RuleSetDiff) -> None:
    """Each rule set sees the whole stream; only the actions differ."""
    assert (diff.before.read, diff.after.read) == (18_956, 18_956)
    assert sum(rule.unchanged for rule in diff.rules.values()) == 1_441
    assert diff.before_version != diff.after_version


def record(
    at: float = 60.0,
    trigger: str = "e1",
    params: dict[str, Any] | None = None,
    outcome: str = "ok",
) -> ActionRecord:
    """Build an action of rule `r` that scales target `t` unless told otherwise."""
    return ActionRecord(
        id=f"{trigger}-{at}",
        at=at,
        rule="r",
        action="scale",
        params=params if params is not None else {"target": "t"},
        trigger_id=trigger,
        trigger_type="x.y",
        why=Explanation("c"),
        outcome=outcome,
    )


@pytest.mark.parametrize(
    ("before", "after", "counts"),
    [
        ([record()], [record()], (0, 0, 0, 1)),
        ([record()], [record(params={"target": "u"})], (0, 0, 1, 0)),
        ([record()], [record(outcome="shadow")], (0, 0, 1, 0)),
        ([record()], [record(at=61.0)], (1, 1, 0, 0)),
        ([record()], [record(trigger="e2")], (1, 1, 0, 0)),
        ([], [record(), record()], (2, 0, 0, 0)),
        ([record(), record()], [record()], (0, 1, 0, 1)),
    ],
    ids=[
        "same",
        "other params",
        "other outcome",
        "other time",
        "other trigger",
        "two for one key",
        "one of two gone",
    ],
)
def test_actions_match_by_rule_action_trigger_and_time(
    before: list[ActionRecord],
    after: list[ActionRecord],
    counts: tuple[int, int, int, int],
) -> None:
    """Added, removed, changed and unchanged counts of one rule."""
    (rule,) = diff_actions(before, after).values()

    assert (
        len(rule.added),
        len(rule.removed),
        len(rule.changed),
        rule.unchanged,
    ) == counts


def test_a_change_names_each_differing_field() -> None:
    """Nested params are compared field by field."""
    before = [record(params={"target": "t", "factor": 2})]
    after = [record(params={"target": "t", "factor": 3}, outcome="shadow")]

    (rule,) = diff_actions(before, after).values()

    assert rule.changed[0][2] == ["params.factor: 2 -> 3", 'outcome: "ok" -> "shadow"']


def test_the_command_reports_json_and_exits_0(
    day_stream: Path, lower_threshold: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A difference is a finding, not a failure."""
    status = main(
        [
            "--log-level",
            "error",
            "diff",
            str(day_stream),
            "--before",
            str(ROOT / "rules"),
            "--after",
            str(lower_threshold),
            "--examples",
            "0",
            "--format",
            "json",
        ]
    )

    report = orjson.loads(capsys.readouterr().out)
    assert status == 0
    assert report["rules"][BURST] == {
        "added": 1,
        "removed": 0,
        "changed": 0,
        "unchanged": 0,
        "examples": {"added": [], "removed": [], "changed": []},
    }
    assert report["after"]["actions"] - report["before"]["actions"] == 1

"""Tests of the rule test runner and `rules-engine test`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.cli import main
from engine.errors import RuleTestError
from engine.rule_tests import (
    SeriesSpec,
    expand_series,
    load_test_file,
    render_result,
    run_test_files,
)

ROOT = Path(__file__).parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
CASES = FIXTURES / "rule_tests" / "tests"
INVALID = FIXTURES / "rule_tests" / "invalid"
INVALID_CASES: list[dict[str, Any]] = yaml.safe_load(
    (FIXTURES / "rule_tests_invalid.yaml").read_text(encoding="utf-8")
)
START = 1_704_067_200.0  # 2024-01-01T00:00:00Z
BROKEN_RULES_CASE = """\
tests:
  - name: rules that do not load
    rules: {rules}
    events:
      - {{type: shop.order_placed}}
    expect: none
"""


def test_a_passing_file_passes_every_case() -> None:
    """Series, fixed times, offsets, untimed and empty expectations all match."""
    results = list(run_test_files([CASES / "passing.yaml"]))

    assert [(r.name, r.status) for r in results] == [
        ("six orders in a minute scale the checkout at the sixth", "pass"),
        ("an expectation without a time matches the action whenever it came", "pass"),
        ("events at fixed times and offsets mix", "pass"),
        ("small orders at a slow pace do nothing at all", "pass"),
        ("events months apart are one timeline, not a clock jump", "pass"),
    ]


def test_a_failing_case_shows_missing_unexpected_and_different_actions() -> None:
    """The report pairs near misses and lists the rest, in time order."""
    path = CASES / "failing.yaml"
    (result,) = run_test_files([path])

    assert result.status == "fail"
    assert render_result(result).splitlines() == [
        f"FAIL {path}: wrong time, wrong parameter and one action too many",
        '  unexpected  +0s       big-order  notify {"severity":"info",'
        '"title":"Big order o-1"}',
        '  missing     +5s       big-order  notify {"title":"Big order o-1"}',
        "  different   +10s      big-order  notify",
        '      params.severity: expected "warning", got "info"',
    ]


def test_a_field_beside_a_merge_key_overrides_the_merged_one() -> None:
    """`data: {<<: *small, total: 250}` is the shared data with a new total."""
    path = FIXTURES / "rule_tests" / "merge_keys" / "merged_data.yaml"
    (case,) = load_test_file(path)
    (result,) = run_test_files([path])

    assert case.events[0].data == {"orderId": "o-1", "total": 250}
    assert (result.status, result.mismatches) == ("pass", [])


def test_the_rules_option_replaces_the_default_directory() -> None:
    """--rules points cases that name no rules at another directory."""
    path = CASES / "passing.yaml"
    (result, *_) = run_test_files([path], ROOT / "rules")

    assert result.status == "error"
    assert result.error == (
        f"{path}:9:26: tests.0.expect.0.rule: The rules define no rule named "
        "'order-burst'. (hint: name a rule by its 'name' field in the rule files)"
    )


@pytest.mark.parametrize(
    ("rate", "length", "count", "second", "last"),
    [
        ("60/m", "1m", 60, "00:01:01.000", "00:01:59.000"),
        ("40/m", "10m", 400, "00:01:01.500", "00:10:58.500"),
        ("1/5m", "2h", 24, "00:06:00.000", "01:56:00.000"),
        ("3/10s", "10s", 3, "00:01:03.333", "00:01:06.666"),
    ],
)
def test_a_series_expands_to_evenly_spaced_events_with_stable_ids(
    rate: str, length: str, count: int, second: str, last: str
) -> None:
    """Event i of a series sits at start + i / rate, to the millisecond."""
    series = SeriesSpec.model_validate(
        {"type": "shop.order_placed", "rate": rate, "for": length, "start": "+1m"}
    )

    events = list(expand_series(series, 2, START))

    assert len(events) == count
    assert [events[0].id, events[-1].id] == ["series2-00001", f"series2-{count:05d}"]
    assert [e.time for e in (events[0], events[1], events[-1])] == [
        "2024-01-01T00:01:00.000Z",
        f"2024-01-01T{second}Z",
        f"2024-01-01T{last}Z",
    ]


@pytest.mark.parametrize(
    "case", INVALID_CASES, ids=[case["file"] for case in INVALID_CASES]
)
def test_a_malformed_test_file_is_refused_with_its_place(
    case: dict[str, Any],
) -> None:
    """Each malformed file gives one sentence naming file, line and column."""
    path = INVALID / case["file"]

    with pytest.raises(RuleTestError) as raised:
        load_test_file(path)

    assert str(raised.value) == case["error"].replace("{file}", str(path))


def test_an_expected_action_with_time_is_told_to_use_at() -> None:
    """The CloudEvents name of the time is not a field; the hint names 'at'."""
    path = INVALID / "expect_time_instead_of_at.yaml"

    with pytest.raises(RuleTestError) as raised:
        load_test_file(path)

    assert str(raised.value).splitlines()[0] == (
        f"{path}:7:7: tests.0.expect.list[ExpectedAction].0.time: This is not a "
        "field of a rule test. (hint: did you mean 'at'?)"
    )


def test_an_event_the_engine_would_reject_makes_its_case_an_error() -> None:
    """Test events pass the same checks as real ones."""
    (result,) = run_test_files([INVALID / "bad_event_data.yaml"], CASES.parent)

    assert result.status == "error"
    assert result.error == (
        "The event events.0 is rejected: The data of a contribution.created "
        "event is invalid: data.projectId: Field required; data.contributorUid: "
        "Field required; data.amount: Field required; data.currency: Field "
        "required."
    )


def test_a_rule_name_the_rules_do_not_define_is_a_problem_of_the_case() -> None:
    """A misspelt name in expect_none_from would otherwise pass silently."""
    path = INVALID / "unknown_rule_names.yaml"
    (result,) = run_test_files([path], CASES.parent)

    assert result.status == "error"
    assert render_result(result).splitlines() == [
        f"ERROR {path}: misspelt and missing rule names",
        f"  {path}:7:16: tests.0.expect.0.rule: The rules define no rule named "
        "'big-ordr'. (hint: did you mean 'big-order'?)",
        f"  {path}:8:37: tests.0.expect_none_from.1: The rules define no rule "
        "named 'no-such-rule'. (hint: name a rule by its 'name' field in the "
        "rule files)",
    ]


def test_the_command_exits_1_and_counts_when_a_case_fails(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """PASS and FAIL lines, then the counts."""
    status = main(["--log-level", "error", "test", str(CASES)])

    out = capsys.readouterr().out.splitlines()
    assert status == 1
    assert [line.split(" ", 1)[0] for line in out if not line.startswith(" ")] == [
        "FAIL",
        "PASS",
        "PASS",
        "PASS",
        "PASS",
        "PASS",
        "5",
    ]
    assert out[-1] == "5 passed, 1 failed, 0 errors"


@pytest.mark.parametrize(
    ("files", "summary"),
    [
        (["passing.yaml", "failing.yaml"], "5 passed, 1 failed, 1 error"),
        ([], "0 passed, 0 failed, 1 error"),
    ],
)
def test_a_case_whose_rules_do_not_load_counts_as_an_error(
    files: list[str],
    summary: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Errors are counted apart from failures and still make the exit 1."""
    for name in files:
        shutil.copy(CASES / name, tmp_path / name)
    broken = FIXTURES / "rules" / "invalid" / "bad_condition.yaml"
    (tmp_path / "unloadable.yaml").write_text(
        BROKEN_RULES_CASE.format(rules=broken), encoding="utf-8"
    )

    status = main(
        ["--log-level", "error", "test", str(tmp_path), "--rules", str(CASES.parent)]
    )

    out = capsys.readouterr().out.splitlines()
    assert status == 1
    assert f"ERROR {tmp_path / 'unloadable.yaml'}: rules that do not load" in out
    assert out[-1] == summary


def test_the_shipped_rule_tests_pass(capsys: pytest.CaptureFixture[str]) -> None:
    """rules/tests/ holds the behaviour the shipped rules promise."""
    status = main(["--log-level", "error", "test", str(ROOT / "rules" / "tests")])

    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if not line.startswith("PASS")] == [
        f"{len(out) - 1} passed, 0 failed, 0 errors"
    ]
    assert status == 0

"""Tests of explaining a recorded action in words."""

from __future__ import annotations

import gzip
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from engine.actions import ActionRecord, Explanation, encode_record
from engine.cli import main
from engine.engine import Engine
from engine.errors import ConfigurationError
from engine.events import event_from_mapping, format_time
from engine.explain import explain_action, find_action
from engine.loader import RuleSet, load_rules

SHOP = Path(__file__).parents[1] / "fixtures" / "rule_tests"
START = 1_704_067_200.0  # 2024-01-01T00:00:00Z


@pytest.fixture(scope="module")
def shop_rules() -> RuleSet:
    return load_rules(SHOP)


@pytest.fixture(scope="module")
def actions(shop_rules: RuleSet) -> list[ActionRecord]:
    """Six orders 10 s apart: the sixth (a big one) fires both shop rules."""
    engine = Engine(shop_rules)
    try:
        for index in range(6):
            total = 250 if index == 5 else 20
            engine.process(
                event_from_mapping(
                    {
                        "specversion": "1.0",
                        "id": f"order-{index + 1}",
                        "source": "/shop",
                        "type": "shop.order_placed",
                        "time": format_time(START + 10 * index),
                        "data": {"orderId": f"o-{index + 1}", "total": total},
                    }
                )
            )
        return engine.take_actions()
    finally:
        engine.close()


@pytest.fixture
def action_log(actions: list[ActionRecord], tmp_path: Path) -> Path:
    path = tmp_path / "actions.jsonl"
    path.write_bytes(b"".join(encode_record(record) for record in actions))
    return path


def by_rule(actions: list[ActionRecord], rule: str) -> ActionRecord:
    return next(record for record in actions if record.rule == rule)


def test_an_aggregate_action_is_told_with_its_value_and_events(
    actions: list[ActionRecord], action_log: Path
) -> None:
    """Every line comes from the record's own fields."""
    burst = by_rule(actions, "order-burst")

    text = explain_action(find_action(action_log, burst.id))

    assert text.splitlines() == [
        f"Action {burst.id}: the rule 'order-burst' ran 'scale' at "
        "2024-01-01T00:00:50.000Z (event time).",
        "Condition:     count over 1m above 5",
        "Value seen:    6",
        "Trigger:       event order-6 (shop.order_placed)",
        "Events:        order-1, order-2, order-3, order-4, order-5, order-6 "
        "(6 recorded, oldest first)",
        f"Rules version: {burst.why.version}",
        'Params:        factor=2, target="checkout"',
        "Outcome:       ok: the handler carried it out",
        "Result:        max=1000, min=1, previous=1, replicas=2",
    ]


def test_an_event_action_is_found_by_a_unique_prefix(
    actions: list[ActionRecord], action_log: Path
) -> None:
    """An id prefix is enough when only one action starts with it."""
    big = by_rule(actions, "big-order")

    found = find_action(action_log, big.id[:8])

    assert found.to_mapping() == big.to_mapping()
    assert "Value seen" not in explain_action(found)
    assert "Condition:     an event of type shop.order_placed where " in (
        explain_action(found)
    )


@pytest.mark.parametrize(
    ("outcome", "error", "line"),
    [
        ("ok", None, "Outcome:       ok: the handler carried it out"),
        (
            "shadow",
            None,
            "Outcome:       shadow: recorded, not carried out (the rule is in "
            "shadow mode)",
        ),
        (
            "failed",
            "The webhook did not take the alert after 3 attempts: HTTP 503.",
            "Outcome:       failed: The webhook did not take the alert after 3 "
            "attempts: HTTP 503.",
        ),
    ],
)
def test_the_outcome_is_told_in_words(
    outcome: str, error: str | None, line: str
) -> None:
    """Shadow and failed actions say what did not happen and why."""
    record = ActionRecord(
        id="0123456789abcdef0123",
        at=START,
        rule="r",
        action="notify",
        params={},
        trigger_id="e1",
        trigger_type="x.y",
        why=Explanation("an event of type x.y", None, ["e1"], "v1"),
        outcome=outcome,
        error=error,
    )

    assert line in explain_action(record).splitlines()


@pytest.mark.parametrize(
    ("action_id", "message"),
    [
        ("abc", "The action id 'abc' is too short; give at least 4 characters."),
        ("ffffffff", "No action with the id 'ffffffff' is in {log}."),
    ],
)
def test_an_unknown_or_too_short_id_is_refused(
    action_log: Path, action_id: str, message: str
) -> None:
    """The message says what to give instead."""
    with pytest.raises(ConfigurationError) as raised:
        find_action(action_log, action_id)

    assert str(raised.value) == message.replace("{log}", str(action_log))


def test_a_truncated_action_log_is_an_error_naming_it(
    actions: list[ActionRecord], tmp_path: Path
) -> None:
    """A damaged gzip log is reported, not a traceback."""
    packed = gzip.compress(b"".join(encode_record(record) for record in actions))
    log = tmp_path / "actions.jsonl.gz"
    log.write_bytes(packed[: len(packed) // 2])

    with pytest.raises(ConfigurationError) as raised:
        find_action(log, "ffffffffffff")

    assert str(raised.value) == (
        f"The action log '{log}' could not be read to its end: Compressed file "
        "ended before the end-of-stream marker was reached."
    )


def test_a_damaged_record_is_named_by_its_line_in_the_file(
    actions: list[ActionRecord], tmp_path: Path
) -> None:
    """Blank lines count, so the number is the one an editor shows."""
    damaged = encode_record(actions[0]).rstrip()[:-1] + b"\n"
    log = tmp_path / "actions.jsonl"
    log.write_bytes(b"\n\n" + damaged)

    with pytest.raises(ConfigurationError) as raised:
        find_action(log, actions[0].id)

    assert str(raised.value) == f"Line 3 of {log} is not a JSON action record."


def test_the_current_rule_is_shown_without_warning_at_the_same_version(
    actions: list[ActionRecord], shop_rules: RuleSet
) -> None:
    """--rules prints the rule as written in its file."""
    text = explain_action(by_rule(actions, "order-burst"), shop_rules, "shop")

    tail = text.split("\n\n", 1)[1].splitlines()
    assert tail == [
        f"The rule now, at {SHOP / 'shop.yaml'}:3:",
        "  - name: order-burst",
        "    on: shop.order_placed",
        "    aggregate: {fn: count, window: 1m}",
        "    threshold: {above: 5, clear_below: 2}",
        "    actions:",
        "      - action: scale",
        "        params: {target: checkout, factor: 2}",
    ]


def test_other_rules_versions_are_warned_about(
    actions: list[ActionRecord], tmp_path: Path
) -> None:
    """A changed rule file makes another version; a removed rule is named."""
    shutil.copy(SHOP / "shop.yaml", tmp_path / "shop.yaml")
    with (tmp_path / "shop.yaml").open("a", encoding="utf-8") as handle:
        handle.write("# edited\n")
    edited = load_rules(tmp_path)
    burst = by_rule(actions, "order-burst")

    changed = explain_action(burst, edited, "new").split("\n\n", 1)[1]
    gone = explain_action(replace(burst, rule="retired"), edited, "new")

    assert changed.splitlines()[0] == (
        f"Warning: the rules in new are version {edited.version}, not "
        f"{burst.why.version} under which this action was decided; the rule "
        "may have changed since."
    )
    assert gone.splitlines()[-1] == (
        f"Warning: the rule 'retired' is no longer in new (rules version "
        f"{edited.version})."
    )


def test_the_command_prints_the_explanation(
    actions: list[ActionRecord],
    action_log: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`rules-engine explain ID --actions FILE` prints the same text."""
    burst = by_rule(actions, "order-burst")

    status = main(["explain", burst.id, "--actions", str(action_log)])

    assert status == 0
    assert capsys.readouterr().out == explain_action(burst) + "\n"


def test_the_command_reads_the_workers_action_log_in_firestore(
    actions: list[ActionRecord],
    firestore_emulator_host: str,
    project_id: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`explain ID --project P` finds the action the worker logged in Firestore."""
    from datetime import UTC, datetime

    from google.cloud import firestore

    from infra.firestore_documents import action_document

    burst = by_rule(actions, "order-burst")
    client = firestore.Client(project=project_id)
    document = action_document(burst, datetime.now(UTC))
    client.document(f"actions/{burst.id}").set(document)

    status = main(["explain", burst.id, "--project", project_id])

    assert status == 0
    assert capsys.readouterr().out == explain_action(burst) + "\n"


def test_an_action_missing_from_firestore_is_refused(
    firestore_emulator_host: str, project_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An id the Firestore log does not hold is an error naming the project."""
    status = main(["explain", "0123456789abcdef0123", "--project", project_id])

    assert status == 2
    assert f"project {project_id!r}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("missing.jsonl", "does not exist."),
        ("folder", "is a directory, not a file."),
    ],
)
def test_an_action_log_that_cannot_be_opened_is_named_as_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, problem: str
) -> None:
    """`--actions` names an action log, not an event file, when it is unusable."""
    (tmp_path / "folder").mkdir()
    log = tmp_path / name

    status = main(["explain", "ffffffffffff", "--actions", str(log)])

    assert status == 2
    assert capsys.readouterr().err == f"error: The action log '{log}' {problem}\n"

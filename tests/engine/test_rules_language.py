"""Tests of the rule language, end to end through the engine.

Each rule file under tests/fixtures/rules/ shows one construct; its
scenarios (tests/fixtures/rules/scenarios/) feed tiny event streams to an
`Engine` and list every action expected, with its rule, event time and
parameters. The comments in the scenarios say why each action is due.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, ConfigDict

from engine.actions import ActionRecord
from engine.engine import Engine
from engine.events import Event, event_from_mapping, format_time
from engine.loader import RuleSet, load_rules
from engine.rule_runtime import CorrelationRuntime
from engine.yaml_source import load_with_marks
from handlers.base import ActionRequest, Handler, HandlerContext
from handlers.registry import HandlerRegistry, builtin_handler_classes

RULES = Path(__file__).parents[1] / "fixtures" / "rules"
T0 = 1717243200.0  # 2024-06-01T12:00:00Z


class AnyParams(BaseModel):
    model_config = ConfigDict(extra="allow")


class RecordHandler(Handler):
    """Accept any parameters and change nothing: the record is the result."""

    name: ClassVar[str] = "record"
    Params = AnyParams

    def execute(
        self, request: ActionRequest, params: Any, context: HandlerContext
    ) -> dict[str, Any]:
        return {}


class ExplodingHandler(Handler):
    """Fail every time, as a handler with a bug would."""

    name: ClassVar[str] = "explode"
    Params = AnyParams

    def execute(
        self, request: ActionRequest, params: Any, context: HandlerContext
    ) -> dict[str, Any]:
        raise RuntimeError("the backend is on fire")


def make_registry() -> HandlerRegistry:
    """Return the built-in handlers plus the two test handlers."""
    classes = builtin_handler_classes()
    classes.update({"record": RecordHandler, "explode": ExplodingHandler})
    return HandlerRegistry(classes)


def load_fixture(name: str) -> RuleSet:
    """Load one rule file of the fixtures with the test handlers."""
    return load_rules(RULES / name, make_registry())


def make_event(number: int, item: list[Any]) -> Event:
    """Build the event of a scenario line [at, type, data, id?]."""
    at, event_type, data, *rest = item
    return event_from_mapping(
        {
            "specversion": "1.0",
            "id": rest[0] if rest else f"e{number}",
            "source": "//tests",
            "type": event_type,
            "time": format_time(T0 + at),
            "data": data,
        }
    )


def run_events(ruleset: RuleSet, items: list[list[Any]]) -> tuple[Engine, list[Any]]:
    """Process scenario events; return the engine and every action record."""
    engine = Engine(ruleset, make_registry())
    records: list[ActionRecord] = []
    for number, item in enumerate(items):
        records += engine.process(make_event(number, item))
    return engine, records


def expected_action(item: list[Any] | dict[str, Any]) -> dict[str, Any]:
    """Normalise an expected action, [rule, at, params, outcome?] or a mapping."""
    if isinstance(item, dict):
        return {"outcome": "ok", **item}
    rule, at, params, *rest = item
    return {
        "rule": rule,
        "at": at,
        "params": params,
        "outcome": rest[0] if rest else "ok",
    }


def observed_action(record: ActionRecord, expected: dict[str, Any]) -> dict[str, Any]:
    """Describe a record with the keys an expected action gives."""
    observed = {
        "rule": record.rule,
        "at": round(record.at - T0, 3),
        "params": record.params,
        "outcome": record.outcome,
    }
    if "result" in expected:
        observed["result"] = record.result
    if "error" in expected:
        observed["error"] = record.error
    return observed


def load_scenarios(*keys: str) -> list[Any]:
    """Return (file, scenario) pairs, only those with one of `keys` if given."""
    found = []
    for path in sorted((RULES / "scenarios").glob("*.yaml")):
        document, _ = load_with_marks(path.read_text())
        for scenario in document["scenarios"]:
            if keys and not any(key in scenario for key in keys):
                continue
            found.append(
                pytest.param(
                    document["rules"],
                    scenario,
                    id=f"{path.stem}: {scenario['name']}",
                )
            )
    return found


# Scenarios


@pytest.mark.parametrize(("rules", "scenario"), load_scenarios())
def test_scenario_gives_exactly_the_expected_actions(
    rules: str, scenario: dict[str, Any]
) -> None:
    """Every action expected happens, in order, and no other."""
    _, records = run_events(load_fixture(rules), scenario["events"])

    expected = [expected_action(item) for item in scenario["actions"]]
    observed = [
        observed_action(record, want)
        for record, want in zip(records, expected, strict=False)
    ]

    assert observed == expected
    assert len(records) == len(expected)


@pytest.mark.parametrize(("rules", "scenario"), load_scenarios("stats", "tier"))
def test_scenario_leaves_the_expected_counts_and_tier(
    rules: str, scenario: dict[str, Any]
) -> None:
    """Counters, where a scenario names them, and the tier are exact."""
    engine, _ = run_events(load_fixture(rules), scenario["events"])

    for name, want in scenario.get("stats", {}).items():
        value = getattr(engine.stats, name)
        if name == "actions":
            value = {f"{h}:{o}": n for (h, o), n in value.items()}
        assert value == want, name
    if "tier" in scenario:
        assert engine.tier == scenario["tier"]


# Behaviour that needs more than a list of actions


def test_whole_placeholders_keep_python_types() -> None:
    """An int stays int, a float stays float and true is not 1."""
    _, records = run_events(
        load_fixture("templates.yaml"),
        [
            [
                0,
                "shop.order",
                {
                    "count": 3,
                    "price": 2.5,
                    "whole": 2.0,
                    "flag": True,
                    "tags": ["a"],
                    "items": [{"sku": "A"}],
                },
            ]
        ],
    )
    params = records[0].params

    assert [type(params[k]) for k in ("count", "price", "whole", "flag")] == [
        int,
        float,
        float,
        bool,
    ]
    assert type(params["nested"]["list"][0]) is int


def test_a_missing_template_value_is_named_in_the_error() -> None:
    """Operations staff see which value the event lacked."""
    _, records = run_events(load_fixture("templates.yaml"), [[0, "shop.refund", {}]])

    assert records[0].error == (
        "The template value 'data.reason' is missing from the event."
    )


def test_a_burst_of_invalidations_becomes_leading_and_trailing_purges() -> None:
    """300 updates of one project in a minute: one purge per second, exact.

    Events come every 0.2 s from 0 to 59.8. The first purges at once (the
    leading edge) and opens a one-second interval; the rest of each
    interval is held, and its last event purges when the interval ends
    (1, 2, ..., 60), which also opens the next. An event of another
    project at 120 moves the clock past 60.
    """
    burst = [[i / 5, "project.updated", {"projectId": "p1"}] for i in range(300)]
    later = [[120, "project.updated", {"projectId": "p2"}]]

    engine, records = run_events(load_fixture("coalesce.yaml"), burst + later)

    p1 = [r for r in records if r.params == {"target": "project:p1"}]
    assert [round(r.at - T0, 3) for r in p1] == [float(s) for s in range(61)]
    assert [r.trigger_id for r in p1[:3]] == ["e0", "e4", "e9"]
    assert p1[-1].trigger_id == "e299"
    assert [r.params for r in records[61:]] == [{"target": "project:p2"}]
    assert engine.stats.fires["invalidate-project"] == 301
    assert engine.stats.coalesced["invalidate-project"] == 301 - 62
    assert engine.stats.actions[("invalidate_cache", "ok")] == 62


def test_coalescing_keeps_targets_apart() -> None:
    """Purges of different keys never hold each other back."""
    events = [
        [0, "project.updated", {"projectId": "p1"}],
        [0.1, "project.updated", {"projectId": "p2"}],
        [0.2, "project.updated", {"projectId": "p1"}],
        [0.3, "project.updated", {"projectId": "p2"}],
        [5, "shop.tick", {}],
    ]

    _, records = run_events(load_fixture("coalesce.yaml"), events)

    assert [(round(r.at - T0, 3), r.params["target"]) for r in records] == [
        (0, "project:p1"),
        (0.1, "project:p2"),
        (1, "project:p1"),
        (1.1, "project:p2"),
    ]


def test_a_shadow_rule_does_not_touch_handler_state() -> None:
    """The scale handler never ran for the shadow rule's actions."""
    engine, _ = run_events(
        load_fixture("shadow.yaml"),
        [[0, "shop.order", {}], [10, "shop.order", {}]],
    )

    assert engine.handler_state.values == {}
    assert engine.stats.actions == {("scale", "shadow"): 2}


def test_correlation_counts_evicted_and_expired_partial_matches() -> None:
    """Dropped partial matches are counted, so the loss is visible."""
    engine, _ = run_events(
        load_fixture("correlate.yaml"),
        [
            [
                0,
                "project.created",
                {"projectId": "a", "creatorUid": "u", "category": "x"},
            ],
            [
                1,
                "project.created",
                {"projectId": "b", "creatorUid": "u", "category": "x"},
            ],
            [
                2,
                "project.created",
                {"projectId": "c", "creatorUid": "u", "category": "x"},
            ],
            [
                4000,
                "project.created",
                {"projectId": "d", "creatorUid": "u", "category": "x"},
            ],
        ],
    )
    runtime = engine.runtimes["funded-fast"]

    assert isinstance(runtime, CorrelationRuntime)
    assert (runtime.evicted, runtime.expired) == (1, 2)
    assert list(runtime.pending) == ["d"]


def test_tier_changed_is_emitted_with_the_change() -> None:
    """change_tier sends tier.changed back into the engine, once per change."""
    engine, records = run_events(
        load_fixture("tiers.yaml"),
        [[0, "metrics.sampled", {"activeUsers": 500}], [600, "shop.tick", {}]],
    )

    assert engine.stats.emitted == 1
    assert [(r.rule, r.trigger_type) for r in records] == [
        ("tier-by-users", "metrics.sampled"),
        ("announce-tier", "tier.changed"),
    ]
    assert engine.handler_state.get("system_config", "tier_history") == [
        {"from": "small", "to": "medium", "at": T0 + 600}
    ]

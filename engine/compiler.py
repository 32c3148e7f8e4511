"""Compile loaded rules into one durable-rules ruleset and a routing table.

Every condition a rule has becomes a durable rule:

| rule part | durable rule name | fact it reads |
|---|---|---|
| `on` + `when` | `NAME` | event fact `{k: e, t: TYPE, f0..fn}` |
| `aggregate` balance | `NAME#plus`, `NAME#minus` | event fact |
| `threshold` | `NAME#fire`, `NAME#clear` | value fact `{k: v, r: NAME, v: VALUE}` |
| `classify` | `NAME#in#BAND`, `NAME#stay#BAND` | value fact |
| `correlate` | `NAME#first`, `NAME#then` | event fact |

The routing table tells, for each event type, which paths to project into
the fact, so that the fact (and the matcher's cache key) holds only what
some rule of that type reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.conditions import (
    Condition,
    PathTable,
    compile_condition,
    iter_paths,
    parse_condition,
)
from engine.loader import LoadedRule, RuleSet

__all__ = ["CompiledRules", "TypeRoute", "compile_rules"]


@dataclass
class TypeRoute:
    """What the engine needs to match one event type."""

    paths: list[tuple[str, str]] = field(default_factory=list)
    # Durable rule names that may fire for this type, kept for routing.
    names: list[str] = field(default_factory=list)


@dataclass
class CompiledRules:
    """The durable-rules definition plus the engine's routing table."""

    definition: dict[str, Any]
    routes: dict[str, TypeRoute]


def _type_test(types: list[str]) -> dict[str, Any]:
    if len(types) == 1:
        return {"t": types[0]}
    return {"$or": [{"t": t} for t in types]}


def _event_rule(
    types: list[str], condition: Condition | None, paths: PathTable
) -> dict[str, Any]:
    tests: list[dict[str, Any]] = [{"k": "e"}, _type_test(types)]
    if condition is not None:
        tests.append(compile_condition(condition, paths))
    return {"all": [{"m": {"$and": tests}}]}


def _value_rule(name: str, tests: list[dict[str, Any]]) -> dict[str, Any]:
    return {"all": [{"m": {"$and": [{"k": "v"}, {"r": name}, *tests]}}]}


def _threshold_rules(loaded: LoadedRule) -> dict[str, Any]:
    spec = loaded.spec
    threshold = spec.threshold
    assert threshold is not None
    # Without its own clear bound, a threshold re-arms once it no longer holds.
    if threshold.above is not None:
        fire = {"$gt": {"v": threshold.above}}
        if threshold.clear_below is not None:
            clear_test = {"$lt": {"v": threshold.clear_below}}
        else:
            clear_test = {"$lte": {"v": threshold.above}}
    else:
        assert threshold.below is not None
        fire = {"$lt": {"v": threshold.below}}
        if threshold.clear_above is not None:
            clear_test = {"$gt": {"v": threshold.clear_above}}
        else:
            clear_test = {"$gte": {"v": threshold.below}}
    return {
        f"{spec.name}#fire": _value_rule(spec.name, [fire]),
        f"{spec.name}#clear": _value_rule(spec.name, [clear_test]),
    }


def _classify_rules(loaded: LoadedRule) -> dict[str, Any]:
    spec = loaded.spec
    classify = spec.classify
    assert classify is not None
    margin = classify.hysteresis
    rules: dict[str, Any] = {}
    lower: float | None = None
    for band in classify.bands:
        upper = band.below
        inside: list[dict[str, Any]] = []
        stay: list[dict[str, Any]] = []
        if lower is not None:
            inside.append({"$gte": {"v": lower}})
            # The margin is a fraction of the boundary's size, so that it
            # widens the band below zero as above it.
            stay.append({"$gte": {"v": lower - abs(lower) * margin}})
        if upper is not None:
            inside.append({"$lt": {"v": upper}})
            stay.append({"$lt": {"v": upper + abs(upper) * margin}})
        rules[f"{spec.name}#in#{band.name}"] = _value_rule(spec.name, inside)
        rules[f"{spec.name}#stay#{band.name}"] = _value_rule(spec.name, stay)
        lower = upper
    return rules


def compile_rules(ruleset: RuleSet) -> CompiledRules:
    """Compile every rule's conditions for durable-rules."""
    paths = PathTable()
    definition: dict[str, Any] = {}
    routes: dict[str, TypeRoute] = {}
    type_paths: dict[str, list[str]] = {}

    def route(types: list[str], name: str, condition: Condition | None) -> None:
        for event_type in types:
            entry = routes.setdefault(event_type, TypeRoute())
            entry.names.append(name)
            wanted = type_paths.setdefault(event_type, [])
            for path in iter_paths(condition) if condition is not None else []:
                if path not in wanted:
                    wanted.append(path)

    for loaded in ruleset.rules:
        spec = loaded.spec
        name = spec.name
        if spec.correlate is not None:
            for role, side in (
                ("first", spec.correlate.first),
                ("then", spec.correlate.then),
            ):
                condition = (
                    parse_condition(side.when) if side.when is not None else None
                )
                definition[f"{name}#{role}"] = _event_rule(side.on, condition, paths)
                route(side.on, f"{name}#{role}", condition)
            continue

        condition = spec.parsed_when()
        aggregate = spec.aggregate
        if aggregate is not None and aggregate.fn == "balance":
            for role, types in (("plus", aggregate.plus), ("minus", aggregate.minus)):
                if types:
                    definition[f"{name}#{role}"] = _event_rule(types, condition, paths)
                    route(types, f"{name}#{role}", condition)
        else:
            types = spec.on or []
            definition[name] = _event_rule(types, condition, paths)
            route(types, name, condition)

        if spec.threshold is not None:
            definition.update(_threshold_rules(loaded))
        if spec.classify is not None:
            definition.update(_classify_rules(loaded))

    for event_type, entry in routes.items():
        entry.paths = [(p, paths.key(p)) for p in type_paths.get(event_type, [])]
    return CompiledRules(definition, routes)

"""Tests of conditions: parsing rule-file conditions and what they match.

Matching is checked end to end: each condition is compiled for
durable-rules and decided by the real matcher on the fact the engine would
build, so the cases hold for the engine, not for a model of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.conditions import (
    OPERATORS,
    AllOf,
    AnyOf,
    Condition,
    ConditionError,
    FieldTest,
    PathTable,
    compile_condition,
    encode_value,
    find_condition_errors,
    iter_paths,
    parse_condition,
    read_path,
)
from engine.matcher import Matcher

FIXTURES = Path(__file__).parents[1] / "fixtures" / "conditions"
CASES = yaml.safe_load((FIXTURES / "cases.yaml").read_text())["cases"]
INVALID = yaml.safe_load((FIXTURES / "invalid.yaml").read_text())["cases"]
ENVELOPE = {
    "id": "e-1",
    "type": "shop.order",
    "source": "//shop",
    "time": "2024-06-01T12:00:00Z",
    "subject": "orders/1",
}


def event_mapping(case: dict[str, Any]) -> dict[str, Any]:
    """Return the mapping rules read: the envelope and the case's data."""
    return {**ENVELOPE, **case.get("event", {}), "data": case["data"]}


def field_tests(condition: Condition) -> list[FieldTest]:
    """Return every field test of a condition tree."""
    if isinstance(condition, FieldTest):
        return [condition]
    return [test for item in condition.items for test in field_tests(item)]


def matches(when: dict[str, Any], mapping: dict[str, Any]) -> bool:
    """Decide a condition on one event with the real durable-rules matcher."""
    paths = PathTable()
    test = compile_condition(parse_condition(when), paths)
    matcher = Matcher({"r": {"all": [{"m": {"$and": [{"k": "e"}, test]}}]}})
    fact: dict[str, Any] = {"k": "e"}
    for path, key in paths.items():
        value = encode_value(read_path(mapping, path))
        if value is not None:
            fact[key] = value
    try:
        return matcher.match(repr(fact), fact) == ("r",)
    finally:
        matcher.close()


# Matching


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_condition_matches_as_documented(case: dict[str, Any]) -> None:
    """Each operator, nesting and path form decides as the case says."""
    assert matches(case["when"], event_mapping(case)) is case["matches"]


def test_every_operator_has_a_matching_case() -> None:
    """The table exercises every operator the language offers, holding."""
    used = {
        test.op
        for case in CASES
        if case["matches"]
        for test in field_tests(parse_condition(case["when"]))
    }

    assert used == set(OPERATORS)


# Parsing


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ({"data.a": 5}, FieldTest("data.a", "eq", 5)),
        ({"data.a": {"gte": 1}}, FieldTest("data.a", "gte", 1)),
        (
            {"data.a": {"gte": 1, "lt": 2}},
            AllOf((FieldTest("data.a", "gte", 1), FieldTest("data.a", "lt", 2))),
        ),
        (
            {"data.a": 1, "data.b": 2},
            AllOf((FieldTest("data.a", "eq", 1), FieldTest("data.b", "eq", 2))),
        ),
        (
            {"any": [{"data.a": 1}, {"all": [{"data.b": 2}]}]},
            AnyOf(
                (
                    FieldTest("data.a", "eq", 1),
                    AllOf((FieldTest("data.b", "eq", 2),)),
                )
            ),
        ),
    ],
)
def test_parse_condition_builds_the_tree(when: dict[str, Any], expected: Any) -> None:
    """Shorthand equality, several operators and keys, all/any nesting."""
    assert parse_condition(when) == expected


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c["name"])
def test_malformed_conditions_are_refused_with_their_place(
    case: dict[str, Any],
) -> None:
    """The error says what is wrong and where, down to list indexes."""
    with pytest.raises(ConditionError) as caught:
        parse_condition(case["when"])

    assert list(caught.value.path) == case["path"]
    assert case["message"] in str(caught.value)


def test_every_problem_of_a_condition_is_found_in_written_order() -> None:
    """A mistake does not hide the ones after it; parsing raises the first."""
    when = {
        "data.a": {"gt": "10", "lt": True},
        "data.b": {"between": [1, 2]},
        "any": [{"data.c": 1}, {}, {"data..d": 1}],
        "data.e": 5,
    }

    errors = find_condition_errors(when, ("when",))
    with pytest.raises(ConditionError) as caught:
        parse_condition(when, ("when",))

    assert [(list(error.path), str(error)) for error in errors] == [
        (
            ["when", "data.a", "gt"],
            "The operator 'gt' on 'data.a' needs a number, not '10'.",
        ),
        (
            ["when", "data.a", "lt"],
            "The operator 'lt' on 'data.a' needs a number, not True.",
        ),
        (
            ["when", "data.b", "between"],
            "'between' is not an operator; use one of eq, ne, gt, gte, lt, lte, "
            "in, exists, prefix, contains.",
        ),
        (
            ["when", "any", 1],
            "A condition must be a non-empty mapping of field paths or all/any.",
        ),
        (
            ["when", "any", 2, "data..d"],
            "'data..d' is not a field path such as data.amount.",
        ),
    ]
    assert (list(caught.value.path), str(caught.value)) == (
        ["when", "data.a", "gt"],
        "The operator 'gt' on 'data.a' needs a number, not '10'.",
    )


def test_a_sound_condition_has_no_problems() -> None:
    """Every well-formed case of the matching table gives an empty list."""
    assert [find_condition_errors(case["when"]) for case in CASES] == [[]] * len(CASES)


def test_iter_paths_lists_each_path_once_in_first_use_order() -> None:
    """The engine projects exactly the paths a condition reads."""
    condition = parse_condition(
        {
            "data.b": 1,
            "any": [{"data.a": {"gt": 1}}, {"data.b": {"lt": 5}}],
            "type": "x",
        }
    )

    assert iter_paths(condition) == ["data.b", "data.a", "type"]


def test_path_table_gives_each_path_one_short_key() -> None:
    """Keys are assigned in first-use order and reused after."""
    paths = PathTable()

    keys = [paths.key(p) for p in ("data.a", "data.b", "data.a", "type")]

    assert keys == ["f0", "f1", "f0", "f2"]
    assert paths.items() == [("data.a", "f0"), ("data.b", "f1"), ("type", "f2")]


# Reading paths and encoding values


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a", {"b": [10, {"c": "deep"}]}),
        ("a.b.0", 10),
        ("a.b.1.c", "deep"),
        ("a.b.2", None),
        ("a.b.x", None),
        ("a.b.0.c", None),
        ("a.missing.c", None),
        ("n", None),
        ("z", 0),
        ("f", False),
    ],
)
def test_read_path_walks_mappings_and_list_indexes(path: str, expected: Any) -> None:
    """Missing steps, bad indexes and steps into scalars all give None."""
    mapping = {"a": {"b": [10, {"c": "deep"}]}, "n": None, "z": 0, "f": False}

    assert read_path(mapping, path) == expected


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (5, 5),
        (2.5, 2.5),
        ("EUR", "s:EUR"),
        ("", "s:"),
        (True, "b:true"),
        (False, "b:false"),
        ({"a": 1}, "o:object"),
        ([1, "x", True, {"a": 1}, [2]], [1, "s:x", "b:true"]),
        (None, None),
    ],
)
def test_encode_value_tags_everything_but_numbers(value: Any, encoded: Any) -> None:
    """Strings, booleans and objects travel tagged; numbers stay numbers."""
    assert encode_value(value) == encoded

"""Tests of the guarded durable-rules matcher."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from engine.conditions import PathTable, compile_condition, parse_condition
from engine.matcher import Matcher, MatcherError, encode_json


def event_rule(when: dict[str, Any], paths: PathTable) -> dict[str, Any]:
    """Return a durable rule over event facts, as the compiler writes one."""
    test = compile_condition(parse_condition(when), paths)
    return {"all": [{"m": {"$and": [{"k": "e"}, test]}}]}


@pytest.fixture
def matcher() -> Any:
    """A matcher with three rules over the amount (f0) and currency (f1)."""
    paths = PathTable()
    built = Matcher(
        {
            "big": event_rule({"data.amount": {"gte": 100}}, paths),
            "euro": event_rule({"data.currency": "EUR"}, paths),
            "big-euro": event_rule(
                {"data.amount": {"gte": 100}, "data.currency": "EUR"}, paths
            ),
        }
    )
    yield built
    built.close()


def call_in_thread(function: Any) -> BaseException | None:
    """Run `function` on another thread and return what it raised."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            function()
        except BaseException as error:  # handed back to the test
            raised.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return raised[0] if raised else None


# Answers


@pytest.mark.parametrize(
    ("fact", "names"),
    [
        ({"f0": 150, "f1": "s:EUR"}, {"big", "euro", "big-euro"}),
        ({"f0": 150, "f1": "s:USD"}, {"big"}),
        ({"f0": 5, "f1": "s:EUR"}, {"euro"}),
        ({"f0": 100.0}, {"big"}),
        ({"f1": "s:EUR"}, {"euro"}),
    ],
)
def test_match_returns_every_rule_that_holds(
    matcher: Matcher, fact: dict[str, Any], names: set[str]
) -> None:
    """Several rules may hold for one fact; each is named once."""
    answer = matcher.match(json.dumps(fact), {"k": "e", **fact})

    assert set(answer) == names
    assert len(answer) == len(names)


@pytest.mark.parametrize(
    "fact",
    [
        {"k": "e", "f0": 5, "f1": "s:USD"},
        {"k": "e"},
        {"k": "v", "r": "other", "v": 1},
    ],
)
def test_a_fact_matching_nothing_gives_an_empty_answer(
    matcher: Matcher, fact: dict[str, Any]
) -> None:
    """No match is an empty tuple, never an exception."""
    assert matcher.match(json.dumps(fact), fact) == ()


def test_the_matcher_keeps_no_fact_between_calls() -> None:
    """A rule that needs two facts at once never holds across two calls."""
    definition = {
        "pair": {"all": [{"a": {"k": "first"}}, {"b": {"k": "second"}}]},
        "single": {"all": [{"m": {"k": "second"}}]},
    }
    matcher = Matcher(definition)

    first = matcher.match("first", {"k": "first"})
    second = matcher.match("second", {"k": "second"})
    matcher.close()

    assert first == ()
    assert second == ("single",)


# Cache


def test_equal_keys_share_one_evaluation(matcher: Matcher) -> None:
    """The second ask of a key is a cache hit and does not reach durable-rules."""
    fact = {"k": "e", "f0": 150, "f1": "s:EUR"}

    answers = [matcher.match("key-a", fact) for _ in range(3)]
    matcher.match("key-b", {"k": "e", "f0": 1})

    assert answers[0] == answers[1] == answers[2]
    assert (matcher.calls, matcher.hits) == (2, 2)


def test_a_full_cache_is_emptied_and_refilled() -> None:
    """Past its size the cache starts over, so a known key is evaluated again."""
    matcher = Matcher({"r": {"all": [{"m": {"k": "e"}}]}}, cache_size=2)

    for key in ("a", "b", "c", "a"):
        matcher.match(key, {"k": "e"})
    matcher.close()

    assert (matcher.calls, matcher.hits) == (4, 0)


# Misuse


def test_a_call_from_another_thread_is_refused(matcher: Matcher) -> None:
    """durable-rules is not thread-safe, so a foreign thread gets an error."""
    error = call_in_thread(lambda: matcher.match("new", {"k": "e", "f0": 1}))

    assert isinstance(error, MatcherError)
    assert "does not own it" in str(error)


def test_a_cached_answer_is_refused_to_another_thread(matcher: Matcher) -> None:
    """The thread check does not depend on whether the answer is cached."""
    matcher.match("known", {"k": "e", "f0": 1})

    error = call_in_thread(lambda: matcher.match("known", {"k": "e", "f0": 1}))

    assert isinstance(error, MatcherError)
    assert matcher.hits == 0


@pytest.mark.parametrize("key", ["cached", "new"])
def test_a_closed_matcher_refuses_to_match(key: str) -> None:
    """After close, every call fails clearly, cached key or not."""
    matcher = Matcher({"r": {"all": [{"m": {"k": "e"}}]}})
    matcher.match("cached", {"k": "e"})
    matcher.close()

    with pytest.raises(MatcherError, match="The matcher is closed"):
        matcher.match(key, {"k": "e"})


def test_closing_twice_is_harmless() -> None:
    """Close may be called again, for example by a reload and a shutdown."""
    matcher = Matcher({"r": {"all": [{"m": {"k": "e"}}]}})

    matcher.close()
    matcher.close()

    with pytest.raises(MatcherError):
        matcher.match("x", {"k": "e"})


def test_closing_one_matcher_leaves_another_working() -> None:
    """Each matcher owns its own ruleset."""
    first = Matcher({"r": {"all": [{"m": {"k": "e"}}]}})
    second = Matcher({"r": {"all": [{"m": {"k": "e"}}]}})

    first.close()
    answer = second.match("x", {"k": "e"})
    second.close()

    assert answer == ("r",)


def test_a_definition_durable_rules_refuses_raises_matcher_error() -> None:
    """A ruleset durable-rules cannot build fails with a readable error."""
    bad = {"r": {"all": [{"m": {"$mt": {"f0": "a%"}}}]}}

    with pytest.raises(MatcherError, match="refused the compiled ruleset"):
        Matcher(bad)


# Numbers durable-rules must read


@pytest.mark.parametrize(
    ("bound", "value", "holds"),
    [
        (0.00001, 0.00002, True),
        (0.00001, 0.000001, False),
        (1e20, 1e21, True),
        (1e20, 1e19, False),
        (-1e-7, -1e-8, True),
        (1e16, 2e16, True),
        (0, 5e-324, True),
        (1e300, float("inf"), True),
        (-1e300, float("-inf"), False),
    ],
)
def test_floats_written_with_an_exponent_are_compared(
    bound: float, value: float, holds: bool
) -> None:
    """Very small and very large floats reach durable-rules intact."""
    matcher = Matcher({"r": {"all": [{"m": {"$gt": {"v": bound}}}]}})

    answer = matcher.match(value, {"v": value})
    matcher.close()

    assert answer == (("r",) if holds else ())


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1e-05, "1.0e-05"),
        (1e20, "1.0e+20"),
        (-2e-7, "-2.0e-07"),
        (1.5e20, "1.5e+20"),
        (float("inf"), "1.0e+309"),
        (float("-inf"), "-1.0e+309"),
        (0.25, "0.25"),
        (3, "3"),
        ('é"', '"\\u00e9\\""'),
        (True, "true"),
        (None, "null"),
        ({"a": [1e-05, "x"], "b": {"c": 2.0}}, '{"a":[1.0e-05,"x"],"b":{"c":2.0}}'),
    ],
)
def test_encode_json_writes_exponents_with_a_decimal_point(
    value: Any, text: str
) -> None:
    """The JSON given to durable-rules is standard and reads back the same."""
    assert encode_json(value) == text
    assert json.loads(text) == value  # Python reads 1.0e+309 as infinity too

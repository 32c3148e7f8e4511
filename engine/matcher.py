"""The guarded durable-rules matcher.

durable-rules decides every condition of every rule; this module keeps its
known traps away from the engine:

1. An event that matches nothing makes durable-rules' Python layer raise,
   and inside `post_batch` that loses the actions of the whole batch. We
   call the C engine directly, one fact at a time, and read "no match" as
   an empty answer, never an exception.
2. durable-rules keeps partial matches of a correlation forever. We assert
   each fact and retract it at once, so the engine holds no fact between
   calls; correlation, windows and timers are kept by our own bounded
   state (`engine.windows`, `engine.rule_runtime`).
3. A registered ruleset cannot change. A reload builds a new `Matcher` and
   deletes the old ruleset, which frees its memory.
4. durable-rules is not thread-safe. A `Matcher` refuses calls from any
   thread but the one that built it.

Facts are flat (see `engine.conditions`), and the answers are cached by
the fact's content: the verdict of a fact depends on nothing else, and a
stream repeats the same projections (the same event type with the same
referenced fields, the same aggregate value) over and over.
"""

from __future__ import annotations

import itertools
import json
import math
import threading
from typing import Any

import durable_rules_engine

from engine.errors import EngineError

__all__ = ["Matcher", "MatcherError", "encode_json"]

_names = itertools.count()


class MatcherError(EngineError):
    """durable-rules failed, or was called from the wrong thread."""


class Matcher:
    """Evaluate flat facts against one durable-rules ruleset, with a cache."""

    def __init__(self, definition: dict[str, Any], cache_size: int = 200_000) -> None:
        self._owner = threading.get_ident()
        self._name = f"rules-{next(_names)}"
        self._rule_names = list(definition)
        self._cache: dict[Any, tuple[str, ...]] = {}
        self._cache_size = cache_size
        self.calls = 0
        self.hits = 0
        try:
            self._handle: int | None = durable_rules_engine.create_ruleset(
                self._name, encode_json(definition)
            )
        except durable_rules_engine.error as error:
            raise MatcherError(
                f"durable-rules refused the compiled ruleset: {error}."
            ) from error

    def match(self, key: Any, fact: dict[str, Any]) -> tuple[str, ...]:
        """Return the names of the durable rules that hold for `fact`.

        `key` must identify the fact's content; equal keys share an answer.

        Raises:
            MatcherError: durable-rules failed or the thread is not the owner.
        """
        # The owner check comes first: a cached answer on a foreign thread
        # would hide the misuse until the first cache miss.
        if threading.get_ident() != self._owner:
            raise MatcherError(
                "The matcher was called from a thread that does not own it; "
                "durable-rules is not thread-safe."
            )
        cached = self._cache.get(key)
        if cached is not None:
            self.hits += 1
            return cached

        names = self._evaluate(fact)
        if len(self._cache) >= self._cache_size:
            # Dropping everything is cheaper than tracking recency, and a
            # stream's working set refills the cache within a few events.
            self._cache.clear()
        self._cache[key] = names
        return names

    def _evaluate(self, fact: dict[str, Any]) -> tuple[str, ...]:
        if self._handle is None:
            raise MatcherError("The matcher is closed.")
        self.calls += 1
        text = encode_json(fact)
        fired: list[str] = []
        try:
            result = durable_rules_engine.assert_fact(self._handle, text)
            self._drain(result[1], fired)
            retracted = durable_rules_engine.retract_fact(self._handle, text)
            self._drain(retracted[1], fired)
        except durable_rules_engine.error as error:
            raise MatcherError(
                f"durable-rules failed on the fact {text[:200]}: {error}."
            ) from error
        # durable-rules may report one rule twice for one fact; the answer
        # is a set, kept in first-report order.
        return tuple(dict.fromkeys(fired))

    def _drain(self, state_handle: int, fired: list[str]) -> None:
        assert self._handle is not None
        action = durable_rules_engine.start_action_for_state(self._handle, state_handle)
        while action:
            fired.extend(json.loads(action[1]))
            following = durable_rules_engine.complete_and_start_action(
                self._handle, state_handle
            )
            action = (None, following) if following else None

    def close(self) -> None:
        """Delete the durable-rules ruleset and free its memory."""
        if self._handle is not None:
            durable_rules_engine.delete_ruleset(self._handle)
            self._handle = None
        self._cache.clear()


def encode_json(value: Any) -> str:
    """Encode a value as JSON that durable-rules can parse.

    durable-rules refuses an exponent without a decimal point (`1e-05`,
    `1e+20`), which is how Python writes very small and very large floats;
    such a float gets `.0` in its mantissa (`1.0e-05`). JSON has no
    infinity (a sum may overflow to it); durable-rules reads a literal too
    large for a float as one.
    """
    if isinstance(value, float):
        if math.isinf(value):
            return "1.0e+309" if value > 0 else "-1.0e+309"
        text = repr(value)
        mantissa, mark, exponent = text.partition("e")
        if mark and "." not in mantissa:
            return f"{mantissa}.0e{exponent}"
        return text
    if isinstance(value, dict):
        items = (f"{json.dumps(k)}:{encode_json(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(encode_json(item) for item in value) + "]"
    return json.dumps(value)

"""Conditions on event fields: parsing from rule files and compiling to durable-rules.

A condition in a rule file is a mapping. Its keys are either `all` / `any`
(a list of conditions) or a field path such as `data.amount`; several keys
in one mapping must all hold. A path maps to a scalar (equality) or to a
mapping of operators::

    when:
      data.amount: {gte: 100}
      data.currency: {in: [EUR, USD]}
      any:
        - data.projectId: {prefix: "climate-"}
        - data.tags: {contains: featured}

Facts given to durable-rules are flat: each referenced path is projected to
a short key (`f0`, `f1`, ...), which sidesteps durable-rules' handling of
nested objects and keeps the facts small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "OPERATORS",
    "AllOf",
    "AnyOf",
    "Condition",
    "ConditionError",
    "FieldTest",
    "PathTable",
    "compile_condition",
    "encode_value",
    "find_condition_errors",
    "parse_condition",
    "read_path",
]

OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "exists", "prefix", "contains")
_NUMERIC_OPERATORS = {"gt": "$gt", "gte": "$gte", "lt": "$lt", "lte": "$lte"}

# durable-rules compares booleans as numbers (true == 1), and a number with a
# string by the number's text ("1" == 1, "abc" > 2). So every value that is
# not a number travels tagged: strings as "s:TEXT", booleans and objects as
# markers. A number's text starts with a digit or '-', which sort below ':',
# and every tag starts with a letter, which sorts above it; the numeric
# operators test that bound too, so that they hold for numbers only.
_STRING = "s:"
_TRUE = "b:true"
_FALSE = "b:false"
_OBJECT = "o:object"
_NUMBER_BOUND = ":"
# Operators of durable-rules' regular expressions: in a prefix, each is
# wrapped in a one-character class. '%' is its escape character and is
# doubled. Every other character stands bare; durable-rules matches the JSON
# text of facts, so a character that JSON escapes (a quote, a control or a
# non-ASCII character) must stay bare for its escape to match itself.
_REGEX_OPERATORS = frozenset("()*+.?[{}|$")


class ConditionError(ValueError):
    """A condition in a rule file is malformed; `path` locates it."""

    def __init__(self, message: str, path: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True, slots=True)
class FieldTest:
    """One operator applied to the value at a field path."""

    path: str
    op: str
    value: Any


@dataclass(frozen=True, slots=True)
class AllOf:
    """Every member condition holds."""

    items: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    """At least one member condition holds."""

    items: tuple[Condition, ...]


Condition = FieldTest | AllOf | AnyOf


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_operand(
    path: str, op: str, value: Any, where: tuple[str | int, ...]
) -> None:
    if op in _NUMERIC_OPERATORS:
        if not _is_number(value) or not math.isfinite(value):
            raise ConditionError(
                f"The operator {op!r} on {path!r} needs a number, not {value!r}.", where
            )
    elif op == "in":
        if not isinstance(value, list) or not value:
            raise ConditionError(
                f"The operator 'in' on {path!r} needs a non-empty list.", where
            )
        for item in value:
            if isinstance(item, dict | list):
                raise ConditionError(
                    f"The operator 'in' on {path!r} takes scalars only.", where
                )
    elif op == "exists":
        if not isinstance(value, bool):
            raise ConditionError(
                f"The operator 'exists' on {path!r} takes true or false.", where
            )
    elif op == "prefix":
        if not isinstance(value, str) or not value:
            raise ConditionError(
                f"The operator 'prefix' on {path!r} needs a non-empty string.", where
            )
        bad = sorted({c for c in value if c in "]\\^\u0000"})
        if bad:
            raise ConditionError(
                f"The prefix {value!r} on {path!r} contains {''.join(bad)!r}, "
                "which prefixes cannot hold.",
                where,
            )
    elif isinstance(value, dict | list):
        raise ConditionError(
            f"The operator {op!r} on {path!r} needs a scalar, not a "
            f"{type(value).__name__}.",
            where,
        )


def parse_condition(raw: Any, where: tuple[str | int, ...] = ()) -> Condition:
    """Parse a condition from its rule-file form.

    Raises:
        ConditionError: the condition is malformed; `.path` locates the
            first part at fault (`find_condition_errors` lists every one).
    """
    errors: list[ConditionError] = []
    condition = _parse(raw, where, errors)
    if condition is None:
        raise errors[0]
    return condition


def find_condition_errors(
    raw: Any, where: tuple[str | int, ...] = ()
) -> list[ConditionError]:
    """Return every problem of a condition, in the order it is written."""
    errors: list[ConditionError] = []
    _parse(raw, where, errors)
    return errors


def _parse(
    raw: Any, where: tuple[str | int, ...], errors: list[ConditionError]
) -> Condition | None:
    """Parse a condition, adding each problem to `errors`; None if any.

    A problem does not stop the walk: the other keys, operators and list
    items are still checked, so that one run of `validate` reports every
    mistake of a condition.
    """
    if not isinstance(raw, dict) or not raw:
        errors.append(
            ConditionError(
                "A condition must be a non-empty mapping of field paths or all/any.",
                where,
            )
        )
        return None
    known = len(errors)
    parts: list[Condition] = []
    for key, value in raw.items():
        here = (*where, key)
        if key in ("all", "any"):
            if not isinstance(value, list) or not value:
                errors.append(
                    ConditionError(
                        f"'{key}' needs a non-empty list of conditions.", here
                    )
                )
                continue
            parsed = [_parse(item, (*here, i), errors) for i, item in enumerate(value)]
            items = tuple(item for item in parsed if item is not None)
            parts.append(AllOf(items) if key == "all" else AnyOf(items))
            continue
        if not isinstance(key, str) or not key or key.startswith(".") or ".." in key:
            errors.append(
                ConditionError(
                    f"{key!r} is not a field path such as data.amount.", here
                )
            )
            continue
        tests = value if isinstance(value, dict) else {"eq": value}
        if not tests:
            errors.append(
                ConditionError(f"The test on {key!r} names no operator.", here)
            )
        for op, operand in tests.items():
            # Shorthand equality is located at the path, an operator at itself.
            place = (*here, op) if isinstance(value, dict) else here
            if op not in OPERATORS:
                errors.append(
                    ConditionError(
                        f"{op!r} is not an operator; use one of "
                        f"{', '.join(OPERATORS)}.",
                        place,
                    )
                )
                continue
            try:
                _check_operand(key, op, operand, place)
            except ConditionError as error:
                errors.append(error)
                continue
            parts.append(FieldTest(key, op, operand))

    if len(errors) > known:
        return None
    return parts[0] if len(parts) == 1 else AllOf(tuple(parts))


def iter_paths(condition: Condition) -> list[str]:
    """Return the field paths a condition reads, in first-use order."""
    if isinstance(condition, FieldTest):
        return [condition.path]
    paths: list[str] = []
    for item in condition.items:
        for path in iter_paths(item):
            if path not in paths:
                paths.append(path)
    return paths


def encode_value(value: Any) -> Any:
    """Encode one projected value for a durable-rules fact."""
    if value is True:
        return _TRUE
    if value is False:
        return _FALSE
    if isinstance(value, str):
        return _STRING + value
    if isinstance(value, dict):
        return _OBJECT
    if isinstance(value, list):
        return [
            encode_value(item) for item in value if not isinstance(item, dict | list)
        ]
    return value


def read_path(mapping: dict[str, Any], path: str) -> Any:
    """Read a dotted path from nested mappings; a missing step gives None."""
    current: Any = mapping
    for step in path.split("."):
        if isinstance(current, dict):
            current = current.get(step)
        elif isinstance(current, list) and step.isdigit():
            index = int(step)
            current = current[index] if index < len(current) else None
        else:
            return None
        if current is None:
            return None
    return current


class PathTable:
    """Assign each distinct field path a short fact key."""

    def __init__(self) -> None:
        self._keys: dict[str, str] = {}

    def key(self, path: str) -> str:
        """Return the fact key of a path, assigning one on first use."""
        key = self._keys.get(path)
        if key is None:
            key = f"f{len(self._keys)}"
            self._keys[path] = key
        return key

    def items(self) -> list[tuple[str, str]]:
        """Return (path, key) pairs in assignment order."""
        return list(self._keys.items())


def _regex_prefix(prefix: str) -> str:
    escaped = "".join(
        f"[{c}]" if c in _REGEX_OPERATORS else "%%" if c == "%" else c
        for c in _STRING + prefix
    )
    return escaped + ".*"


def compile_condition(condition: Condition, paths: PathTable) -> dict[str, Any]:
    """Compile a condition to a durable-rules expression over a flat fact."""
    if isinstance(condition, AllOf):
        return {"$and": [compile_condition(c, paths) for c in condition.items]}
    if isinstance(condition, AnyOf):
        return {"$or": [compile_condition(c, paths) for c in condition.items]}

    key = paths.key(condition.path)
    op, value = condition.op, condition.value
    if op == "eq":
        return {key: encode_value(value)}
    if op == "ne":
        return {"$neq": {key: encode_value(value)}}
    if op in _NUMERIC_OPERATORS:
        return {
            "$and": [
                {_NUMERIC_OPERATORS[op]: {key: value}},
                {"$lt": {key: _NUMBER_BOUND}},
            ]
        }
    if op == "in":
        return {"$or": [{key: encode_value(item)} for item in value]}
    if op == "exists":
        return {"$ex": {key: 1}} if value else {"$nex": {key: 1}}
    if op == "prefix":
        return {"$mt": {key: _regex_prefix(value)}}
    # contains: a list holds the item
    return {"$iany": {key: {"$i": encode_value(value)}}}

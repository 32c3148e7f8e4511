"""Tests of cache targets in Redis glob syntax: escapes, patterns, matching."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from handlers.cache_keys import compile_pattern, escape_glob, is_pattern, literal_key

FIXTURE = Path(__file__).parents[1] / "fixtures" / "cache" / "patterns.yaml"
TABLE = yaml.safe_load(FIXTURE.read_text())

# Values an event might carry; each must match only itself once escaped.
EVENT_VALUES = ["*", "prj-[12]", "a?b", "back\\slash", "]", "\\*", "plain-42"]


@pytest.mark.parametrize("case", TABLE["cases"], ids=lambda case: case["name"])
def test_a_pattern_matches_the_keys_redis_matches(case: dict[str, Any]) -> None:
    """The translation follows Redis: sets, ranges, negation and escapes."""
    compiled = compile_pattern(case["pattern"])

    assert [key for key in TABLE["keys"] if compiled.fullmatch(key)] == case["matches"]


@pytest.mark.parametrize("value", EVENT_VALUES)
def test_an_escaped_value_is_an_exact_key_naming_itself(value: str) -> None:
    """Escaped, a value is no pattern, and it names the key it spells."""
    escaped = escape_glob(value)

    assert is_pattern(escaped) is False
    assert literal_key(escaped) == value
    assert compile_pattern(escaped).fullmatch(value) is not None


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("user:42", False),
        ("user:*", True),
        ("user:?", True),
        ("user:[12]", True),
        ("user:]", False),
        ("user:\\*", False),
        ("user:\\\\*", True),
        ("project:prj-\\[12\\]:*", True),
    ],
)
def test_a_target_is_a_pattern_only_with_an_unescaped_wildcard(
    target: str, expected: bool
) -> None:
    """`*`, `?` and `[` make a pattern unless a backslash escapes them."""
    assert is_pattern(target) is expected


def test_a_trailing_backslash_stands_for_itself() -> None:
    """With nothing after it to escape, a backslash is kept, as Redis keeps it."""
    assert literal_key("user:a\\") == "user:a\\"

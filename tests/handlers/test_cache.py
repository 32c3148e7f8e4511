"""Tests of the in-process cache that `invalidate_cache` uses by default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from handlers.cache import MemoryCache

PATTERNS = yaml.safe_load(
    (Path(__file__).parents[1] / "fixtures" / "cache" / "patterns.yaml").read_text()
)


@pytest.mark.parametrize("case", PATTERNS["cases"], ids=lambda case: case["name"])
def test_a_pattern_drops_the_keys_redis_would_drop(case: dict[str, Any]) -> None:
    """Invalidation reads a pattern as Redis does, escapes included."""
    cache = MemoryCache()
    for key in PATTERNS["keys"]:
        cache.put(key, "cached")

    removed = cache.invalidate(case["pattern"])

    left = [key for key in PATTERNS["keys"] if cache.get(key) is not None]
    assert removed == len(case["matches"])
    assert left == [key for key in PATTERNS["keys"] if key not in case["matches"]]


def test_an_escaped_exact_key_drops_that_key_alone() -> None:
    """`user:\\*` names the key `user:*`, not every user's entry."""
    cache = MemoryCache()
    for key in ("user:*", "user:1"):
        cache.put(key, "cached")

    removed = cache.invalidate("user:\\*")

    assert removed == 1
    assert (cache.get("user:*"), cache.get("user:1")) == (None, "cached")

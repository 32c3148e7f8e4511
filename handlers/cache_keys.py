"""Cache targets in Redis glob syntax: exact keys, patterns and escapes.

A target of `invalidate_cache` is read as Redis reads the pattern of SCAN:
`*` matches any run of characters, `?` one character, `[...]` one of a set
(`[^...]` one outside it, `a-z` a range), and a backslash makes the next
character stand for itself. A target with no unescaped `*`, `?` or `[` is
one exact key, its escapes removed; so `user:\\*` names the key `user:*`.

Values a template inserts into a target are escaped with `escape_glob`:
a `*` in an event's data must not widen `user:{{ data.uid }}` into every
user's entry.
"""

from __future__ import annotations

import functools
import re

__all__ = ["compile_pattern", "escape_glob", "is_pattern", "literal_key"]

_SPECIAL = frozenset("*?[]\\")
_WILDCARDS = frozenset("*?[")


def escape_glob(text: str) -> str:
    """Escape `text` so that, as a pattern, it matches only itself."""
    return "".join(f"\\{char}" if char in _SPECIAL else char for char in text)


def is_pattern(target: str) -> bool:
    """Tell whether a target holds an unescaped `*`, `?` or `[`."""
    escaped = False
    for char in target:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in _WILDCARDS:
            return True
    return False


def literal_key(target: str) -> str:
    """Return the key an exact target names: its escapes removed.

    A backslash that ends the target has nothing to escape and stands for
    itself, as Redis reads it.
    """
    return re.sub(r"\\(.)", r"\1", target, flags=re.DOTALL)


# Cached: a rule invalidates the same few patterns over and over (stats:*
# once a minute), and translating one costs far more than matching it.
@functools.lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Translate a Redis glob pattern into a regular expression.

    Use `fullmatch` on the result: a pattern matches a whole key.
    """
    parts: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "[":
            part, index = _translate_set(pattern, index + 1)
            parts.append(part)
            continue
        if char == "\\" and index + 1 < len(pattern):
            index += 1
            parts.append(re.escape(pattern[index]))
        elif char in "*?":
            parts.append(".*" if char == "*" else ".")
        else:
            parts.append(re.escape(char))
        index += 1

    return re.compile("".join(parts), re.DOTALL)


def _translate_set(pattern: str, index: int) -> tuple[str, int]:
    """Translate the set that starts at `index`; return it and where it ends.

    As in Redis, `]` right after `[` closes an empty set (which matches
    nothing), and a set that is never closed runs to the end of the pattern.
    """
    negated = pattern.startswith("^", index)
    if negated:
        index += 1
    members: list[str] = []
    while index < len(pattern) and pattern[index] != "]":
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            index += 1
            members.append(re.escape(pattern[index]))
        elif index + 2 < len(pattern) and pattern[index + 1] == "-":
            # Redis takes a reversed range such as z-a as a-z.
            low, high = sorted((char, pattern[index + 2]))
            members.append(f"{re.escape(low)}-{re.escape(high)}")
            index += 2
        else:
            members.append(re.escape(char))
        index += 1

    if not members:
        return ("." if negated else "(?!)"), index + 1
    return f"[{'^' if negated else ''}{''.join(members)}]", index + 1

"""Action parameters templated from the event or the aggregate.

A string may hold `{{ path }}` placeholders, where `path` is dotted and
starts at a context root: `event`, `data`, `value`, `key`, `band`,
`previous`, `rule`, `tier`, `first`. A string that is exactly one
placeholder keeps the value's type (a number stays a number).
"""

from __future__ import annotations

import re
from typing import Any

from engine.conditions import read_path

__all__ = ["ROOTS", "TemplateError", "find_placeholders", "render"]

ROOTS = ("event", "data", "value", "key", "band", "previous", "rule", "tier", "first")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.]*)\s*\}\}")
_WHOLE = re.compile(r"^\{\{\s*([A-Za-z_][A-Za-z0-9_.]*)\s*\}\}$")


class TemplateError(ValueError):
    """A template names a value that is not there."""


def find_placeholders(value: Any) -> list[str]:
    """Return every placeholder path in a parameter value."""
    if isinstance(value, str):
        if "{{" in value and not _PLACEHOLDER.search(value):
            return ["{{"]
        return _PLACEHOLDER.findall(value)
    if isinstance(value, dict):
        return [p for item in value.values() for p in find_placeholders(item)]
    if isinstance(value, list):
        return [p for item in value for p in find_placeholders(item)]
    return []


def _lookup(path: str, context: dict[str, Any]) -> Any:
    root, _, rest = path.partition(".")
    if root not in context:
        raise TemplateError(
            f"The template names {root!r}, which this rule does not have."
        )
    value = context[root]
    if rest:
        value = read_path(value, rest) if isinstance(value, dict) else None
    if value is None:
        raise TemplateError(f"The template value {path!r} is missing from the event.")
    return value


def _format(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def render(value: Any, context: dict[str, Any]) -> Any:
    """Render every template in a parameter value.

    Raises:
        TemplateError: a placeholder names a missing value.
    """
    if isinstance(value, str):
        if "{{" not in value:
            return value
        whole = _WHOLE.match(value)
        if whole:
            return _lookup(whole.group(1), context)
        return _PLACEHOLDER.sub(lambda m: _format(_lookup(m.group(1), context)), value)
    if isinstance(value, dict):
        return {key: render(item, context) for key, item in value.items()}
    if isinstance(value, list):
        return [render(item, context) for item in value]
    return value

"""Action parameters templated from the event or the aggregate.

A string may hold `{{ path }}` placeholders, where `path` is dotted and
starts at a context root: `event`, `data`, `value`, `key`, `band`,
`previous`, `rule`, `tier`, `first`. A string that is exactly one
placeholder keeps the value's type (a number stays a number).

Parameters held in `EscapingParams` name an escape for some of their
entries: every value inserted there goes through it, while the text
written in the rule file stays as it is.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from engine.conditions import read_path

__all__ = ["ROOTS", "EscapingParams", "TemplateError", "find_placeholders", "render"]

Escape = Callable[[str], str]

ROOTS = ("event", "data", "value", "key", "band", "previous", "rule", "tier", "first")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.]*)\s*\}\}")
_WHOLE = re.compile(r"^\{\{\s*([A-Za-z_][A-Za-z0-9_.]*)\s*\}\}$")


class TemplateError(ValueError):
    """A template names a value that is not there."""


class EscapingParams(dict[str, Any]):
    """Action parameters whose named entries escape the values they insert.

    Args:
        params: the parameters as the rule file writes them.
        escapes: the escape of each parameter that has one, by name.
    """

    def __init__(
        self, params: Mapping[str, Any], escapes: Mapping[str, Escape]
    ) -> None:
        super().__init__(params)
        self.escapes = dict(escapes)


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
    if isinstance(value, EscapingParams):
        escapes = value.escapes
        return {
            key: _render(item, context, escapes.get(key)) for key, item in value.items()
        }
    return _render(value, context, None)


def _render(value: Any, context: dict[str, Any], escape: Escape | None) -> Any:
    if isinstance(value, str):
        if "{{" not in value:
            return value
        whole = _WHOLE.match(value)
        if whole:
            found = _lookup(whole.group(1), context)
            # Only text can hold what the escape guards against; a number
            # keeps its type, as in any other parameter.
            if escape is not None and isinstance(found, str):
                return escape(found)
            return found

        def insert(match: re.Match[str]) -> str:
            text = _format(_lookup(match.group(1), context))
            return text if escape is None else escape(text)

        return _PLACEHOLDER.sub(insert, value)
    if isinstance(value, dict):
        return {key: _render(item, context, escape) for key, item in value.items()}
    if isinstance(value, list):
        return [_render(item, context, escape) for item in value]
    return value

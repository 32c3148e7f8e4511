"""Tests of action parameter templates: rendering and escaped parameters."""

from __future__ import annotations

from typing import Any

import pytest

from engine.templates import EscapingParams, render
from handlers.cache_keys import escape_glob

CONTEXT = {"data": {"uid": "*", "projectId": "prj-[12]", "count": 3}, "rule": "r"}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        pytest.param(
            {"target": "user:{{ data.uid }}"},
            {"target": "user:\\*"},
            id="an inserted value is escaped",
        ),
        pytest.param(
            {"target": "project:{{ data.projectId }}:*"},
            {"target": "project:prj-\\[12\\]:*"},
            id="the rule's own star stays a pattern",
        ),
        pytest.param(
            {"target": "{{ data.uid }}"},
            {"target": "\\*"},
            id="a whole placeholder of text is escaped",
        ),
        pytest.param(
            {"target": "{{ data.count }}"},
            {"target": 3},
            id="a whole placeholder of a number keeps its type",
        ),
        pytest.param(
            {"target": "stats:*", "note": "for {{ data.uid }}"},
            {"target": "stats:*", "note": "for *"},
            id="a parameter without an escape inserts values as they are",
        ),
    ],
)
def test_escaping_params_escape_what_they_insert_only(
    params: dict[str, Any], expected: dict[str, Any]
) -> None:
    """The escape applies to inserted values of its parameter, not to the text."""
    rendered = render(EscapingParams(params, {"target": escape_glob}), CONTEXT)

    assert rendered == expected


def test_plain_params_insert_values_as_they_are() -> None:
    """Without an escape, a glob character from an event is inserted unchanged."""
    rendered = render({"target": "user:{{ data.uid }}"}, CONTEXT)

    assert rendered == {"target": "user:*"}

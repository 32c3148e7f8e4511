"""Tests of which failed actions are worth another attempt."""

from __future__ import annotations

from typing import Any, ClassVar, cast

import pytest
from pydantic import BaseModel

from engine.actions import ActionRecord, Explanation, run_handler
from engine.errors import HandlerError, TransientHandlerError
from engine.retry_queue import RetryQueue
from handlers.base import ActionRequest, Handler, HandlerContext


class _Params(BaseModel):
    count: int


class _Raising(Handler):
    """A handler that raises what it is given, or answers when given None."""

    name: ClassVar[str] = "raising"
    Params = _Params

    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.calls = 0

    def execute(
        self, request: ActionRequest, params: Any, context: HandlerContext
    ) -> dict[str, Any]:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return {"count": params.count}


# These handlers read nothing of their context.
_NO_CONTEXT = cast(HandlerContext, None)


def _record(params: dict[str, Any]) -> ActionRecord:
    return ActionRecord(
        id="a1",
        at=0.0,
        rule="r",
        action="raising",
        params=params,
        trigger_id="e1",
        trigger_type="t",
        why=Explanation("always"),
    )


# Each case: what the handler raises, the parameters, then the outcome, the
# error and whether the failure is retryable.
_CASES = [
    ("success", None, {"count": 2}, "ok", None, False),
    (
        "transient",
        TransientHandlerError("The cache did not answer in time."),
        {"count": 2},
        "failed",
        "The cache did not answer in time.",
        True,
    ),
    (
        "permanent",
        HandlerError("The webhook refused the alert: HTTP 400."),
        {"count": 2},
        "failed",
        "The webhook refused the alert: HTTP 400.",
        False,
    ),
    (
        "unclassified",
        KeyError("host"),
        {"count": 2},
        "failed",
        "KeyError: 'host'",
        True,
    ),
    (
        "invalid parameters",
        None,
        {"count": "many"},
        "failed",
        "The rendered parameters are invalid: Input should be a valid integer, "
        "unable to parse string as an integer.",
        False,
    ),
]


@pytest.mark.parametrize(
    ("error", "params", "outcome", "message", "retryable"),
    [case[1:] for case in _CASES],
    ids=[case[0] for case in _CASES],
)
def test_a_failure_is_retryable_only_if_a_retry_may_pass(
    error: Exception | None,
    params: dict[str, Any],
    outcome: str,
    message: str | None,
    retryable: bool,
) -> None:
    """Transient and unclassified errors may pass later; the others never."""
    record = _record(params)

    run_handler(record, _Raising(error), _NO_CONTEXT)

    assert (record.outcome, record.error, record.retryable) == (
        outcome,
        message,
        retryable,
    )
    assert record.seconds is not None


def test_only_a_retryable_failure_is_queued() -> None:
    """add says whether the action waits for another attempt."""
    queue = RetryQueue(max_attempts=3)
    transient, permanent = _record({"count": 1}), _record({"count": 1})
    permanent.id = "a2"
    run_handler(transient, _Raising(TransientHandlerError("later")), _NO_CONTEXT)
    run_handler(permanent, _Raising(HandlerError("never")), _NO_CONTEXT)

    assert queue.add(transient, now=10.0) is True
    assert queue.add(permanent, now=10.0) is False
    assert queue.due(11.0) == ["a1"]


def test_one_attempt_in_all_queues_nothing() -> None:
    """With max_attempts 1 even a transient failure is handed back at once."""
    queue = RetryQueue(max_attempts=1)
    record = _record({"count": 1})
    run_handler(record, _Raising(TransientHandlerError("later")), _NO_CONTEXT)

    assert queue.add(record, now=10.0) is False
    assert len(queue) == 0

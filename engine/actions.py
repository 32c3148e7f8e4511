"""Action records: what a rule did, with a deterministic id and its reasons.

An action's id is a hash of the rule, the action's position in the rule,
the triggering event and the event time of the firing. A redelivered event
or a replayed stream therefore produces the same ids, which is what lets a
store refuse a second effect.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from engine.errors import EngineError, TransientHandlerError
from engine.events import format_time
from handlers.base import ActionRequest, Handler, HandlerContext

__all__ = [
    "ActionRecord",
    "Explanation",
    "action_id",
    "encode_record",
    "run_handler",
]


def action_id(rule: str, position: int, event_id: str, at: float) -> str:
    """Return the deterministic id of one action."""
    text = f"{rule}\0{position}\0{event_id}\0{round(at * 1000)}"
    return hashlib.blake2b(text.encode(), digest_size=10).hexdigest()


@dataclass(slots=True)
class Explanation:
    """Why a rule fired: its condition, the value it saw, the events behind it."""

    condition: str
    value: Any = None
    events: list[str] = field(default_factory=list)
    version: str = ""

    def to_mapping(self) -> dict[str, Any]:
        """Return the explanation as JSON-compatible data."""
        mapping: dict[str, Any] = {"condition": self.condition}
        if self.value is not None:
            mapping["value"] = self.value
        mapping["events"] = self.events
        mapping["rules_version"] = self.version
        return mapping


@dataclass(slots=True)
class ActionRecord:
    """One action the engine decided on, and what became of it."""

    id: str
    at: float
    rule: str
    action: str
    params: dict[str, Any]
    trigger_id: str
    trigger_type: str
    why: Explanation
    outcome: str = "pending"
    result: dict[str, Any] | None = None
    error: str | None = None
    # Wall-clock seconds the handler took; None if no handler ran. Left out
    # of the mapping, so that a replay writes the same bytes every time.
    seconds: float | None = field(default=None, compare=False)
    # Whether a failure may pass on another attempt; see `run_handler`.
    retryable: bool = field(default=False, compare=False)

    def to_request(self) -> ActionRequest:
        """Return what a handler receives to carry out this action."""
        trigger = {"event_id": self.trigger_id, "type": self.trigger_type}
        return ActionRequest(
            self.id, self.rule, self.action, self.params, self.at, trigger
        )

    def to_mapping(self) -> dict[str, Any]:
        """Return the record as the JSON line `replay` writes."""
        mapping: dict[str, Any] = {
            "at": format_time(self.at),
            "rule": self.rule,
            "action": self.action,
            "params": self.params,
            "trigger": {"event_id": self.trigger_id, "type": self.trigger_type},
            "id": self.id,
            "outcome": self.outcome,
        }
        if self.result is not None:
            mapping["result"] = self.result
        if self.error is not None:
            mapping["error"] = self.error
        mapping["why"] = self.why.to_mapping()
        return mapping


def run_handler(
    record: ActionRecord,
    handler: Handler,
    context: HandlerContext,
    params: BaseModel | None = None,
) -> None:
    """Carry out `record`'s action; set its outcome and its result or error.

    `params` are the action's parameters already validated, when the caller
    has them; otherwise they are validated here. A failure is retryable
    when the handler raised `TransientHandlerError`, or an exception it did
    not classify; invalid parameters and a `HandlerError` fail the same way
    on every attempt, so they are not.
    """
    record.error = None
    record.retryable = False
    started = time.perf_counter()
    try:
        if params is None:
            params = handler.Params.model_validate(record.params)
        record.result = handler.execute(record.to_request(), params, context)
        record.outcome = "ok"
    except ValidationError as error:
        record.outcome = "failed"
        record.error = (
            f"The rendered parameters are invalid: {error.errors()[0]['msg']}."
        )
    except EngineError as error:
        record.outcome, record.error = "failed", str(error)
        record.retryable = isinstance(error, TransientHandlerError)
    except Exception as error:  # a handler bug must not stop the engine
        record.outcome, record.error = "failed", f"{type(error).__name__}: {error}"
        record.retryable = True
    finally:
        record.seconds = time.perf_counter() - started


def encode_record(record: ActionRecord) -> bytes:
    """Encode a record as one JSON line with a stable key order."""
    return orjson.dumps(record.to_mapping(), option=orjson.OPT_APPEND_NEWLINE)

"""Action records: what a rule did, with a deterministic id and its reasons.

An action's id is a hash of the rule, the action's position in the rule,
the triggering event and the event time of the firing. A redelivered event
or a replayed stream therefore produces the same ids, which is what lets a
store refuse a second effect.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from engine.events import format_time
from handlers.base import ActionRequest

__all__ = ["ActionRecord", "Explanation", "action_id", "encode_record"]


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


def encode_record(record: ActionRecord) -> bytes:
    """Encode a record as one JSON line with a stable key order."""
    return orjson.dumps(record.to_mapping(), option=orjson.OPT_APPEND_NEWLINE)

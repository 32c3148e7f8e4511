"""Failed actions waiting for another attempt, kept with the checkpoint.

An action fails inside `Engine.process`, after the rule that produced it
has already changed the engine's state; processing the event again would
find it a duplicate. So the worker retries the action itself, not the
event, for these reasons:

1. Redelivering the trigger message would not run the action again: the
   restored engine has seen the event and drops it.
2. On an ordered subscription an unacknowledged message holds back every
   later message of its key, so one failing webhook would stop the stream.
3. Actions fired by timers (a `for` duration, a held coalesced action)
   have no message of their own to redeliver.

Each action gets `max_attempts` in all, the first included, with a
back-off that doubles from `backoff` seconds up to a minute; an action out
of attempts is handed back to the worker to dead-letter. Only a failure
that a retry may fix is retried (`engine.actions.run_handler`): invalid
parameters or a handler's `HandlerError` (a webhook answering 400, say)
would fail the same way every time, and are dead-lettered at once. A retry runs the
handler outside the event flow: an event it emits (a tier change's
`tier.changed`) is processed with the next event.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.actions import ActionRecord, Explanation, run_handler

if TYPE_CHECKING:
    from engine.engine import Engine

__all__ = ["RetryQueue"]

_MAX_BACKOFF = 60.0


class RetryQueue:
    """Failed actions by id, with their attempts and next due time.

    Args:
        max_attempts: attempts per action, the first one included.
        backoff: seconds before the first retry; it doubles after each.
    """

    def __init__(self, max_attempts: int, backoff: float = 1.0) -> None:
        self.max_attempts = max_attempts
        self.backoff = backoff
        self._entries: dict[str, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, record: ActionRecord, now: float) -> bool:
        """Queue an action that just failed its first attempt, if worth it.

        Returns False when the action gets no other attempt: its failure is
        not retryable, or one attempt is all it has; the caller then
        dead-letters it.
        """
        if self.max_attempts <= 1 or not record.retryable:
            return False
        self._entries[record.id] = {
            "record": _encode(record),
            "attempts": 1,
            "next_at": now + self.backoff,
        }
        return True

    def due(self, now: float) -> list[str]:
        """Return the ids of the actions due for another attempt, oldest first."""
        due = [
            (entry["next_at"], action_id)
            for action_id, entry in self._entries.items()
            if entry["next_at"] <= now
        ]
        return [action_id for _, action_id in sorted(due)]

    def attempt(
        self, action_id: str, engine: Engine, now: float
    ) -> tuple[ActionRecord, int, bool]:
        """Run one queued action again through its handler.

        Returns the record with its new outcome, the attempts made so far
        and whether the action is out of attempts; a finished action (one
        that succeeded or is out of attempts) leaves the queue.
        """
        entry = self._entries[action_id]
        record = _decode(entry["record"])
        run_handler(record, engine.registry.get(record.action), engine.context)
        entry["attempts"] += 1
        attempts: int = entry["attempts"]
        exhausted = record.outcome == "failed" and (
            attempts >= self.max_attempts or not record.retryable
        )
        if record.outcome != "failed" or exhausted:
            del self._entries[action_id]
        else:
            delay = min(self.backoff * 2 ** (attempts - 1), _MAX_BACKOFF)
            entry["next_at"] = now + delay
        return record, attempts, exhausted

    def clear(self) -> None:
        """Forget every queued action."""
        self._entries.clear()

    def snapshot(self) -> dict[str, Any]:
        """Return the queue as JSON-compatible data."""
        return {action_id: dict(entry) for action_id, entry in self._entries.items()}

    def restore(self, data: dict[str, Any]) -> None:
        """Continue from a snapshot taken by `snapshot`."""
        self._entries = {action_id: dict(entry) for action_id, entry in data.items()}


def _encode(record: ActionRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "at": record.at,
        "rule": record.rule,
        "action": record.action,
        "params": record.params,
        "trigger_id": record.trigger_id,
        "trigger_type": record.trigger_type,
        "why": record.why.to_mapping(),
        "error": record.error,
    }


def _decode(data: dict[str, Any]) -> ActionRecord:
    why = data["why"]
    return ActionRecord(
        id=data["id"],
        at=data["at"],
        rule=data["rule"],
        action=data["action"],
        params=data["params"],
        trigger_id=data["trigger_id"],
        trigger_type=data["trigger_type"],
        why=Explanation(
            why["condition"], why.get("value"), why["events"], why["rules_version"]
        ),
        outcome="failed",
        error=data["error"],
    )

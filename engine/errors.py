"""Exceptions raised by the rules engine.

Every exception the engine raises on purpose derives from `EngineError`::

    EngineError
    ├── EventRejected          one input line or message is not a valid event
    ├── RuleLoadError          a rule file cannot be read, parsed or compiled
    │   └── (carries a list of RuleProblem, one per finding)
    ├── RuleTestError          a rule test file cannot be read or is malformed
    ├── HandlerError           an action handler failed
    │   ├── HandlerNotFound    an action names no registered handler
    │   └── TransientHandlerError
    │                          a retry may succeed (timeouts, backend down)
    ├── StateError             the state store failed
    │   └── TransientStateError
    └── ConfigurationError     a command line or environment setting is wrong
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ConfigurationError",
    "EngineError",
    "EventRejected",
    "HandlerError",
    "HandlerNotFound",
    "RuleLoadError",
    "RuleProblem",
    "RuleTestError",
    "StateError",
    "TransientHandlerError",
    "TransientStateError",
]


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class EventRejected(EngineError):
    """One input line or message is not an acceptable event.

    `reason` is a short stable code (for metrics and dead-letter attributes);
    the message is a sentence for people.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class RuleProblem:
    """One finding about a rule file, located as precisely as known."""

    file: str
    line: int
    column: int
    rule: str | None
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        rule = f" rule {self.rule!r}:" if self.rule else ""
        hint = f" (hint: {self.hint})" if self.hint else ""
        return f"{where}:{rule} {self.message}{hint}"


class RuleLoadError(EngineError):
    """Rule files failed to load; `problems` lists every finding."""

    def __init__(self, problems: list[RuleProblem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        count = len(problems)
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"The rules did not load: {count} {noun}.\n{lines}")


class RuleTestError(EngineError):
    """A rule test file cannot be read, or its cases are malformed."""


class HandlerError(EngineError):
    """An action handler failed to carry out an action."""


class HandlerNotFound(HandlerError):
    """An action names a handler that is not registered."""


class TransientHandlerError(HandlerError):
    """A handler failed in a way that a later retry may fix."""


class StateError(EngineError):
    """The state store failed to read or write."""


class TransientStateError(StateError):
    """The state store is unreachable for now; a retry may succeed."""


class ConfigurationError(EngineError):
    """A command-line option or environment setting is wrong."""

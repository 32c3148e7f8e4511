"""The handler interface: how an action reaches the outside world.

A handler is registered by name. Its `Params` model is checked when rules
load (template fields are checked once rendered) and again, fully, before
each execution. A handler may name parameters whose templates escape the
values they insert (`template_escapes`), so that an event cannot change
what such a parameter means. Handlers see the engine through a
`HandlerContext`: the current tier and its configuration, a small
key/value state that is saved with the engine's state, and `emit` to send
an event back into the engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel

from engine.rule_model import TierConfig

__all__ = ["ActionRequest", "Handler", "HandlerContext", "HandlerState"]


@dataclass(frozen=True, slots=True)
class ActionRequest:
    """One action to carry out, with its deterministic id."""

    id: str
    rule: str
    action: str
    params: dict[str, Any]
    at: float
    trigger: dict[str, Any] = field(default_factory=dict)


class HandlerState(Protocol):
    """Namespaced key/value state kept with the engine's state."""

    def get(self, namespace: str, key: str) -> Any:
        """Return the stored value, or None."""

    def set(self, namespace: str, key: str, value: Any) -> None:
        """Store a JSON-compatible value."""

    def keys(self, namespace: str) -> list[str]:
        """Return the keys stored in a namespace, sorted."""


class HandlerContext(Protocol):
    """What a handler may read and do besides its own backend."""

    @property
    def tier(self) -> str | None:
        """The platform's current tier."""

    @property
    def tiers(self) -> dict[str, TierConfig]:
        """Every tier's configuration, from the rule files."""

    @property
    def state(self) -> HandlerState:
        """State saved with the engine's state."""

    def emit(self, event_type: str, data: dict[str, Any], at: float) -> None:
        """Send an event back into the engine, processed after this one."""


class Handler(ABC):
    """Base class of action handlers."""

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]]
    # At most one action per distinct params per this many seconds of event
    # time, unless the rule says otherwise; None means no coalescing.
    default_coalesce: ClassVar[float | None] = None
    # Parameters whose templates pass each value they insert through the
    # function given, such as a glob escape for a cache target: a `*` from
    # an event would otherwise turn one key into a pattern.
    template_escapes: ClassVar[Mapping[str, Callable[[str], str]]] = {}

    @abstractmethod
    def execute(
        self, request: ActionRequest, params: Any, context: HandlerContext
    ) -> dict[str, Any]:
        """Carry out one action and return what it did (JSON-compatible).

        Raises:
            HandlerError: the action failed; TransientHandlerError if a retry
                may succeed.
        """

    def close(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Release backend connections."""

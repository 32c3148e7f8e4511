"""What a handler needs to announce an effect as a CloudEvent.

Handlers depend on this small interface rather than on a Pub/Sub client,
so that the engine runs without any cloud library and tests can record
what would have been published.
"""

from __future__ import annotations

from typing import Any, Protocol

from handlers.base import ActionRequest, Handler

__all__ = ["EventPublisher", "PublishingHandler"]


class EventPublisher(Protocol):
    """Publish one engine-made CloudEvent to a configured destination."""

    def publish(
        self,
        event_type: str,
        data: dict[str, Any],
        *,
        action_id: str,
        at: float,
        subject: str | None = None,
    ) -> str:
        """Publish an event whose id derives from `action_id`; return that id.

        The same action always gives the same event id and body, so that a
        redelivered trigger publishes a duplicate that consumers can drop.

        Raises:
            HandlerError: the destination refused the event;
                TransientHandlerError if a retry may succeed.
        """


class PublishingHandler(Handler):
    """A handler that may announce its effect through an `EventPublisher`."""

    def __init__(self, publisher: EventPublisher | None = None) -> None:
        self._publisher = publisher

    def announce(
        self,
        request: ActionRequest,
        event_type: str,
        data: dict[str, Any],
        subject: str,
    ) -> None:
        """Publish the effect, if a publisher is configured.

        Call it before changing any state: when publishing fails, the state
        is as before, so a retry of the action computes the same effect and
        publishes an event with the same id.
        """
        if self._publisher is not None:
            self._publisher.publish(
                event_type, data, action_id=request.id, at=request.at, subject=subject
            )

"""Encode events as Pub/Sub messages, and publish the engine's own events.

`encode_structured` and `encode_binary` are the inverse of
`infra.pubsub.decode_message` under the CloudEvents Pub/Sub protocol
binding: a structured message carries the whole CloudEvent as its JSON
body; a binary one carries the attributes as `ce-*` message attributes and
the data as the body.

`CloudEventPublisher` is what the `scale` and `change_tier` handlers use to
announce their effects (`scaling.applied`, `tier.changed`) on a topic.
"""

from __future__ import annotations

from typing import Any

import orjson

from engine.errors import HandlerError, TransientHandlerError
from engine.events import Event, format_time
from infra.pubsub import (
    STRUCTURED_CONTENT_TYPE,
    PubSubPublisher,
    SourceError,
    TransientSourceError,
)

__all__ = [
    "ENGINE_SOURCE",
    "CloudEventPublisher",
    "encode_binary",
    "encode_structured",
    "engine_event_id",
]

# The CloudEvents source of events the engine makes; the engine's own
# `emit` uses the same.
ENGINE_SOURCE = "rules-engine"
_STRUCTURED_ATTRIBUTES = {"content-type": STRUCTURED_CONTENT_TYPE}


def encode_structured(event: Event) -> tuple[bytes, dict[str, str]]:
    """Return the body and attributes of a structured-mode message."""
    return orjson.dumps(event.to_mapping()), dict(_STRUCTURED_ATTRIBUTES)


def encode_binary(event: Event) -> tuple[bytes, dict[str, str]]:
    """Return the body and attributes of a binary-mode message.

    Message attributes are strings, so an extension attribute that is a
    number or a boolean comes back from decoding as its string form, as the
    CloudEvents type system prescribes; the envelope and data come back
    unchanged. Pub/Sub limits attribute values to 1,024 bytes, and an event
    with a longer attribute is refused by the publish call.
    """
    attributes = {
        "ce-specversion": "1.0",
        "ce-id": event.id,
        "ce-source": event.source,
        "ce-type": event.type,
        "ce-time": event.time,
    }
    if event.subject is not None:
        attributes["ce-subject"] = event.subject
    for name, value in event.extra.items():
        if name == "datacontenttype":
            attributes["content-type"] = str(value)
        else:
            attributes[f"ce-{name}"] = _attribute_text(value)
    return orjson.dumps(event.data), attributes


def _attribute_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def engine_event_id(action_id: str, event_type: str) -> str:
    """Return the id of the event an action announces.

    It is the same id the engine gives the event when it feeds it back to
    the rules, so the copy on the topic and the one inside the engine can
    be matched.
    """
    return f"{action_id}:{event_type}"


class CloudEventPublisher:
    """Publish the engine's own events to one topic, in structured mode.

    Args:
        client: the Pub/Sub publisher; its project completes a topic id.
        topic: a topic id, or a full `projects/.../topics/...` path.
        timeout: seconds to wait for Pub/Sub to confirm each event.
    """

    def __init__(
        self, client: PubSubPublisher, topic: str, *, timeout: float = 30.0
    ) -> None:
        self._client = client
        self.topic = topic
        self._timeout = timeout

    def publish(
        self,
        event_type: str,
        data: dict[str, Any],
        *,
        action_id: str,
        at: float,
        subject: str | None = None,
    ) -> str:
        """Publish the event an action announces and return its id.

        The id derives from the action id and `time` is the action's event
        time, so a redelivered trigger publishes the same bytes again.

        Raises:
            TransientHandlerError: Pub/Sub was unavailable or did not confirm
                in time; a retry may succeed.
            HandlerError: Pub/Sub refused the event.
        """
        event = Event(
            id=engine_event_id(action_id, event_type),
            source=ENGINE_SOURCE,
            type=event_type,
            time=format_time(at),
            ts=at,
            data=data,
            subject=subject,
        )
        message = encode_structured(event)
        try:
            self._client.publish(self.topic, [message], timeout=self._timeout)
        except TransientSourceError as error:
            raise TransientHandlerError(
                f"The {event_type} event of action {action_id} was not published "
                f"to {self.topic}: {error}"
            ) from error
        except SourceError as error:
            raise HandlerError(
                f"Pub/Sub refused the {event_type} event of action {action_id} "
                f"on {self.topic}: {error}"
            ) from error
        return event.id

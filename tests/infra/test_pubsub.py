"""Tests of the Pub/Sub adapter against the Pub/Sub emulator."""

from __future__ import annotations

import base64
import dataclasses
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import structlog
import structlog.testing
import yaml

from engine.errors import EventRejected
from engine.events import MAX_EVENT_BYTES
from infra.pubsub import (
    PubSubPublisher,
    PubSubSource,
    ReceivedMessage,
    SourceError,
    TransientSourceError,
    _chunk_ack_ids,
    decode_message,
    provision,
)

_TABLE = yaml.safe_load(
    (Path(__file__).parent / "fixtures/pubsub_messages.yaml").read_text()
)
_DEFAULTS = _TABLE["defaults"]


@pytest.fixture
def engine_project(pubsub_emulator_host: str, project_id: str) -> str:
    """Provision the engine's topics in a fresh project; return the project."""
    provision(project_id, "events", "engine", "dead-letters", "dead-letters-kept")
    return project_id


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# Provisioning


@pytest.mark.emulator
def test_provision_creates_everything_once(
    pubsub_emulator_host: str, project_id: str
) -> None:
    """The first call creates four resources; a second finds them all."""
    arguments = (project_id, "events", "engine", "dead-letters", "dead-letters-kept")
    paths = {
        "project": project_id,
        "topic": f"projects/{project_id}/topics/events",
        "subscription": f"projects/{project_id}/subscriptions/engine",
        "dead_letter_topic": f"projects/{project_id}/topics/dead-letters",
        "dead_letter_subscription": (
            f"projects/{project_id}/subscriptions/dead-letters-kept"
        ),
        "ack_deadline_seconds": 60,
        "max_delivery_attempts": 5,
    }

    first = provision(*arguments)
    second = provision(*arguments)

    assert first == {
        **paths,
        "created": [
            paths["topic"],
            paths["dead_letter_topic"],
            paths["subscription"],
            paths["dead_letter_subscription"],
        ],
    }
    assert second == {**paths, "created": []}


@pytest.mark.emulator
def test_provision_refuses_a_subscription_of_another_topic(
    pubsub_emulator_host: str, project_id: str
) -> None:
    """An existing subscription of another topic is an error, not 'found'."""
    provision(project_id, "events", "engine", "dead-letters", "dead-letters-kept")

    with pytest.raises(SourceError) as raised:
        provision(project_id, "other", "engine", "other-dl", "other-dl-kept")

    assert str(raised.value) == (
        f"The subscription projects/{project_id}/subscriptions/engine already "
        f"exists on the topic projects/{project_id}/topics/events, not on "
        f"projects/{project_id}/topics/other; name another subscription or "
        "delete that one."
    )


@pytest.mark.emulator
@pytest.mark.parametrize(
    ("existing", "asked", "message"),
    [
        pytest.param(
            False,
            True,
            "The subscription {path} already exists without message ordering, "
            "but --ordered asks for it; Pub/Sub cannot turn ordering on for an "
            "existing subscription, so delete it and provision again, or name "
            "another subscription.",
            id="unordered found, ordered asked",
        ),
        pytest.param(
            True,
            False,
            "The subscription {path} already exists with message ordering, but "
            "ordering was not asked for; add --ordered to keep it, or delete it "
            "and provision again, or name another subscription.",
            id="ordered found, unordered asked",
        ),
    ],
)
def test_provision_refuses_a_subscription_ordered_otherwise(
    pubsub_emulator_host: str,
    project_id: str,
    existing: bool,
    asked: bool,
    message: str,
) -> None:
    """An existing subscription with the other ordering is an error, not 'found'."""
    arguments = (project_id, "events", "engine", "dead-letters", "dead-letters-kept")
    provision(*arguments, ordered=existing)

    with pytest.raises(SourceError) as raised:
        provision(*arguments, ordered=asked)

    path = f"projects/{project_id}/subscriptions/engine"
    assert str(raised.value) == message.format(path=path)


@pytest.mark.emulator
def test_provision_finds_an_ordered_subscription_when_ordering_is_asked(
    pubsub_emulator_host: str, project_id: str
) -> None:
    """The same ordering asked again finds every resource and creates none."""
    arguments = (project_id, "events", "engine", "dead-letters", "dead-letters-kept")
    provision(*arguments, ordered=True)

    again = provision(*arguments, ordered=True)

    assert again["created"] == []


def test_provision_with_pubsub_unreachable_fails_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing listening: an error worth retrying, in seconds, not a hang."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{_free_port()}")
    started = time.monotonic()

    with pytest.raises(TransientSourceError) as caught:
        provision("test-offline", "events", "engine", "dead", "dead-kept")

    assert time.monotonic() - started < 35
    assert str(caught.value).startswith(
        "Pub/Sub could not create projects/test-offline/topics/events for now ("
    )


# Pulling and settling


@pytest.mark.emulator
def test_published_messages_are_pulled_once_and_acknowledged(
    engine_project: str,
) -> None:
    """2,000 published messages arrive exactly once and stay gone once acked."""
    count = 2000
    with PubSubPublisher(engine_project) as publisher:
        message_ids = publisher.publish(
            "events", ((f'{{"n": {n}}}'.encode(), {"n": str(n)}) for n in range(count))
        )

    received: list[ReceivedMessage] = []
    with PubSubSource(engine_project, "engine") as source:
        while len(received) < count:
            batch = source.pull(max_messages=1000, timeout=5)
            assert batch, f"the pull came back empty after {len(received)} messages"
            received.extend(batch)
        # One call for all: the adapter splits it into requests of 1,000 ids.
        source.ack([message.ack_id for message in received])
        leftover = source.pull(max_messages=1000, timeout=3)

    assert len(set(message_ids)) == count
    assert sorted(m.message_id for m in received) == sorted(message_ids)
    assert sorted(int(m.attributes["n"]) for m in received) == list(range(count))
    assert all(json.loads(m.data) == {"n": int(m.attributes["n"])} for m in received)
    assert {m.delivery_attempt for m in received} == {1}
    assert leftover == []


def _pull_all(project: str, count: int) -> list[ReceivedMessage]:
    """Pull and acknowledge `count` messages of the engine's subscription."""
    received: list[ReceivedMessage] = []
    with PubSubSource(project, "engine") as source:
        while len(received) < count:
            batch = source.pull(max_messages=1000, timeout=5)
            assert batch, f"the pull came back empty after {len(received)} messages"
            source.ack([message.ack_id for message in batch])
            received.extend(batch)
    return received


@pytest.mark.emulator
def test_messages_are_stored_in_the_order_published(engine_project: str) -> None:
    """20,000 messages in one call arrive in exactly the order given.

    Several requests in flight at once let later messages overtake earlier
    ones (the client library's batching did so for a few percent).
    """
    count = 20_000
    with PubSubPublisher(engine_project) as publisher:
        message_ids = publisher.publish(
            "events", ((b"{}", {"n": str(n)}) for n in range(count))
        )

    received = _pull_all(engine_project, count)

    assert [int(m.attributes["n"]) for m in received] == list(range(count))
    assert [m.message_id for m in received] == message_ids


@pytest.mark.emulator
def test_large_messages_are_split_across_requests(engine_project: str) -> None:
    """Three 4 MiB messages exceed one request's 9 MiB and still all arrive."""
    bodies = [bytes([65 + n]) * (4 * 1024 * 1024) for n in range(3)]
    with PubSubPublisher(engine_project) as publisher:
        message_ids = publisher.publish("events", ((b, {}) for b in bodies))

    received = _pull_all(engine_project, 3)

    assert len(set(message_ids)) == 3
    assert [m.message_id for m in received] == message_ids
    assert [m.data for m in received] == bodies


@pytest.mark.emulator
def test_publish_to_missing_topic_is_a_source_error(
    pubsub_emulator_host: str, project_id: str
) -> None:
    """A topic that does not exist is refused, naming it, after no message."""
    with (
        PubSubPublisher(project_id) as publisher,
        pytest.raises(SourceError) as caught,
    ):
        publisher.publish("nowhere", ((b"{}", {}) for _ in range(5000)))

    assert type(caught.value) is SourceError
    assert str(caught.value) == (
        f"Pub/Sub stopped accepting messages published to "
        f"projects/{project_id}/topics/nowhere after 0: Topic not found."
    )


def test_publish_to_unreachable_pubsub_is_transient(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With nothing listening, publishing fails in a way worth retrying.

    Each failed try is logged while the retries last.
    """
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{_free_port()}")

    with (
        structlog.testing.capture_logs() as logs,
        PubSubPublisher("test-offline") as publisher,
        pytest.raises(TransientSourceError) as caught,
    ):
        publisher.publish("events", [(b"{}", {})], timeout=1.0)

    assert [(e["event"], e["published"]) for e in logs][:1] == [("publish retrying", 0)]

    assert str(caught.value).startswith(
        "Pub/Sub stopped accepting messages published to "
        "projects/test-offline/topics/events after 0: "
    )


@pytest.mark.emulator
def test_nacked_message_is_delivered_again(engine_project: str) -> None:
    """A nack hands the message back at once, counted as a second attempt."""
    with PubSubPublisher(engine_project) as publisher:
        [message_id] = publisher.publish("events", [(b"{}", {"kind": "retry-me"})])

    with PubSubSource(engine_project, "engine") as source:
        [first] = source.pull(timeout=5)
        source.nack([first.ack_id])
        [second] = source.pull(timeout=5)
        source.ack([second.ack_id])

    assert (first.message_id, first.delivery_attempt) == (message_id, 1)
    assert (second.message_id, second.delivery_attempt) == (message_id, 2)
    assert second.attributes == {"kind": "retry-me"}


@pytest.mark.emulator
def test_pulled_message_decodes_with_its_subscription(engine_project: str) -> None:
    """A plain body pulled from Pub/Sub gets the message id and subscription."""
    with PubSubPublisher(engine_project) as publisher:
        [message_id] = publisher.publish("events", [(b'{"type": "order.paid"}', {})])

    with PubSubSource(engine_project, "engine") as source:
        [message] = source.pull(timeout=5)
        source.ack([message.ack_id])
        event = source.decode(message)

    assert event.id == message_id
    assert event.source == (
        f"//pubsub.googleapis.com/projects/{engine_project}/subscriptions/engine"
    )
    assert event.ts == pytest.approx(message.publish_time, abs=0.001)


@pytest.mark.emulator
def test_extend_refuses_a_deadline_beyond_ten_minutes(
    engine_project: str,
) -> None:
    """Ack deadlines are limited to 600 seconds by the API."""
    with (
        PubSubSource(engine_project, "engine") as source,
        pytest.raises(ValueError) as caught,
    ):
        source.extend(["any"], 601)

    assert str(caught.value) == (
        "An ack deadline of 601 seconds is outside the allowed range of 0 to 600 "
        "seconds."
    )


@pytest.mark.emulator
def test_pull_from_missing_subscription_is_a_source_error(
    pubsub_emulator_host: str, project_id: str
) -> None:
    """A subscription that does not exist is refused, not worth a retry."""
    with (
        PubSubSource(project_id, "nowhere") as source,
        pytest.raises(SourceError) as caught,
    ):
        source.pull(timeout=5)

    assert type(caught.value) is SourceError
    assert str(caught.value) == (
        f"Pub/Sub refused to pull from projects/{project_id}/subscriptions/nowhere: "
        "Subscription does not exist."
    )


def test_unreachable_pubsub_is_a_transient_source_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With nothing listening, pull and ack fail in a way worth retrying."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{_free_port()}")

    with PubSubSource("test-offline", "engine") as source:
        with pytest.raises(TransientSourceError) as pulled:
            source.pull(timeout=5)
        with pytest.raises(TransientSourceError) as acked:
            source.ack(["ack-1"])

    assert str(pulled.value).startswith(
        "Pub/Sub could not pull from projects/test-offline/subscriptions/engine "
        "for now ("
    )
    assert str(acked.value).endswith("; a retry may succeed.")


@pytest.mark.parametrize(
    ("id_length", "count", "expected_sizes"),
    [
        (40, 2500, [1000, 1000, 500]),
        (1000, 1000, [407, 407, 186]),
        (40, 0, []),
    ],
    ids=["by count", "by bytes", "nothing"],
)
def test_ack_ids_are_chunked_to_the_request_limits(
    id_length: int, count: int, expected_sizes: list[int]
) -> None:
    """Chunks hold at most 1,000 ids and at most 400 KiB of them."""
    ack_ids = [f"{n:0{id_length}d}" for n in range(count)]

    chunks = list(_chunk_ack_ids(ack_ids))

    assert [len(chunk) for chunk in chunks] == expected_sizes
    assert [ack_id for chunk in chunks for ack_id in chunk] == ack_ids


# Decoding


@pytest.mark.parametrize("case", _TABLE["cases"], ids=lambda case: case["name"])
def test_decode_message_follows_the_case_table(case: dict[str, Any]) -> None:
    """Each message in the table decodes to its event or its rejection reason."""
    if "body_base64" in case:
        body = base64.b64decode(case["body_base64"])
    else:
        body = case.get("body", "").encode()

    def decode() -> dict[str, Any]:
        event = decode_message(
            body,
            case["attributes"],
            _DEFAULTS["message_id"],
            _DEFAULTS["publish_time"],
            _DEFAULTS["subscription"],
        )
        return dataclasses.asdict(event)

    if "rejected" in case:
        with pytest.raises(EventRejected) as caught:
            decode()
        assert caught.value.reason == case["rejected"]
        if "message" in case:
            assert str(caught.value) == case["message"]
    else:
        assert decode() == {"subject": None, "extra": {}, **case["event"]}


@pytest.mark.parametrize(
    "attributes",
    [
        {
            "ce-specversion": "1.0",
            "ce-id": "big",
            "ce-source": "//s",
            "ce-type": "order.shipped",
            "ce-time": "2024-06-01T11:59:00Z",
        },
        {},
    ],
    ids=["binary", "plain"],
)
def test_decode_message_rejects_a_body_over_the_size_limit(
    attributes: dict[str, str],
) -> None:
    """Bodies obey the same size limit as lines of a recorded stream."""
    padding = "x" * MAX_EVENT_BYTES
    body = json.dumps({"type": "order.shipped", "note": padding}).encode()

    with pytest.raises(EventRejected) as caught:
        decode_message(body, attributes, "1", 0.0, "projects/p/subscriptions/s")

    assert caught.value.reason == "too_large"
    assert str(caught.value) == (
        f"The event is {len(body)} bytes; the limit is {MAX_EVENT_BYTES} bytes."
    )

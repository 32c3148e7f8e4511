"""Tests of handlers wired to real backends through the configuration.

Each test writes a configuration file, builds the registry from it and
runs the engine on rules that turn one request event into one action, so
the path from file to backend is the one production takes.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from engine.actions import ActionRecord
from engine.config import build_registry, load_config
from engine.engine import Engine
from engine.errors import ConfigurationError, TransientHandlerError
from engine.events import Event, event_from_mapping
from engine.loader import RuleSet, load_rules
from handlers.cache import InvalidateCacheHandler, MemoryCache
from handlers.registry import HandlerRegistry, builtin_handler_classes
from handlers.scale import ScaleHandler
from infra.pubsub import PubSubSource, decode_message, provision

RULES = Path(__file__).parent / "fixtures" / "backend_rules"
TIME = "2024-06-01T12:00:00Z"
TS = 1717243200.0
MVP_TO_GROWTH_CONFIG = {
    "functions": {
        "memoryMb": 512,
        "timeoutSeconds": 60,
        "minInstances": 1,
        "maxInstances": 50,
    },
    "firestore": {"readsPerSecond": 10000, "writesPerSecond": 1000},
    "storage": {"bandwidthMbps": 500, "sizeGb": 100},
    "features": {
        "caching": True,
        "cdn": True,
        "multiRegion": False,
        "sharding": False,
        "edgeComputing": False,
    },
    "alerts": {"responseTimeMs": 3000.0, "errorRate": 0.05, "cpuPercent": 70.0},
}


@pytest.fixture(scope="module")
def ruleset() -> RuleSet:
    """Load the request-to-action rules once."""
    return load_rules(RULES)


def request(event_type: str, data: dict[str, Any], event_id: str = "req-1") -> Event:
    """Return a request event at the fixed test time."""
    return event_from_mapping(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": "/tests",
            "type": event_type,
            "time": TIME,
            "data": data,
        }
    )


def configured_registry(directory: Path, text: str) -> HandlerRegistry:
    """Write a configuration file and build the registry it describes."""
    path = directory / "engine.yaml"
    path.write_text(text)
    return build_registry(load_config(path, environ={}), builtin_handler_classes())


def run_one(ruleset: RuleSet, registry: HandlerRegistry, event: Event) -> ActionRecord:
    """Process one event in a fresh engine and return its only action."""
    engine = Engine(ruleset, registry)
    try:
        [action] = engine.process(event)
    finally:
        engine.close()
    return action


# invalidate_cache on Redis and in process

# The target a rule file writes, the event's data, the keys cached and the
# keys left. Glob characters written in the rule are patterns; those an
# event brings in match only themselves.
_CACHE_CASES = [
    pytest.param(
        "project:{{ data.projectId }}",
        {"projectId": "7"},
        ["project:7", "project:70", "project:7:members"],
        ["project:70", "project:7:members"],
        id="an exact key removes that key only",
    ),
    pytest.param(
        "stats:*",
        {},
        ["stats:daily", "stats:weekly:eu", "stat:daily", "project:1"],
        ["stat:daily", "project:1"],
        id="a star glob removes every key under the prefix",
    ),
    pytest.param(
        "user:?",
        {},
        ["user:1", "user:2", "user:10"],
        ["user:10"],
        id="a question mark matches exactly one character",
    ),
    pytest.param(
        "user:[12]",
        {},
        ["user:1", "user:2", "user:3"],
        ["user:3"],
        id="a character class matches its members only",
    ),
    pytest.param(
        "user:{{ data.uid }}",
        {"uid": "*"},
        ["user:*", "user:1", "user:2"],
        ["user:1", "user:2"],
        id="a star from the event removes the key it spells alone",
    ),
    pytest.param(
        "project:{{ data.projectId }}",
        {"projectId": "prj-[12]"},
        ["project:prj-[12]", "project:prj-1", "project:prj-2"],
        ["project:prj-1", "project:prj-2"],
        id="brackets from the event are no character class",
    ),
    pytest.param(
        "project:{{ data.projectId }}:*",
        {"projectId": "prj-[12]"},
        [
            "project:prj-[12]:members",
            "project:prj-[12]:stats",
            "project:prj-1:members",
            "project:prj-2:stats",
        ],
        ["project:prj-1:members", "project:prj-2:stats"],
        id="the rule's pattern around an event's value keeps to that project",
    ),
    pytest.param(
        "user:{{ data.uid }}",
        {"uid": "a?\\b"},
        ["user:a?\\b", "user:ax\\b", "user:a?b"],
        ["user:a?b", "user:ax\\b"],
        id="a question mark and a backslash from the event match themselves",
    ),
]


def purge_rules(directory: Path, target: str) -> RuleSet:
    """Write and load one rule that purges `target` on ops.purge_requested."""
    directory.mkdir()
    # The prefix keeps each test to keys of its own.
    (directory / "purge.yaml").write_text(
        "rules:\n"
        "  - name: purge-on-request\n"
        "    on: ops.purge_requested\n"
        "    actions:\n"
        "      - action: invalidate_cache\n"
        f"        params: {{target: '{{{{ data.prefix }}}}{target}'}}\n"
    )
    return load_rules(directory)


@pytest.mark.redis
@pytest.mark.parametrize(("target", "data", "keys", "remaining"), _CACHE_CASES)
def test_redis_backend_removes_exactly_the_matching_keys(
    target: str,
    data: dict[str, str],
    keys: list[str],
    remaining: list[str],
    redis_url: str,
    tmp_path: Path,
) -> None:
    """invalidate_cache configured for Redis removes the matches, nothing else."""
    prefix = f"test:{uuid.uuid4().hex}:"
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.mset({f"{prefix}{key}": "cached" for key in keys})
    registry = configured_registry(
        tmp_path,
        f"handlers:\n  invalidate_cache: {{backend: redis, url: '{redis_url}'}}\n",
    )

    try:
        event = request("ops.purge_requested", {"prefix": prefix, **data})
        action = run_one(purge_rules(tmp_path / "rules", target), registry, event)
        left = sorted(client.scan_iter(match=f"{prefix}*", count=1000))
    finally:
        registry.close()
        leftovers = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if leftovers:
            client.unlink(*leftovers)
        client.close()

    assert (action.outcome, action.result) == (
        "ok",
        {"removed": len(keys) - len(remaining)},
    )
    assert left == sorted(f"{prefix}{key}" for key in remaining)


@pytest.mark.parametrize(("target", "data", "keys", "remaining"), _CACHE_CASES)
def test_memory_backend_removes_what_redis_removes(
    target: str,
    data: dict[str, str],
    keys: list[str],
    remaining: list[str],
    tmp_path: Path,
) -> None:
    """The in-process cache reads targets and escapes as the Redis backend does."""
    registry = configured_registry(tmp_path, "handlers:\n  invalidate_cache: {}\n")
    handler = registry.get("invalidate_cache")
    assert isinstance(handler, InvalidateCacheHandler)
    assert isinstance(handler.backend, MemoryCache)
    cache = handler.backend
    for key in keys:
        cache.put(f"p:{key}", "cached")

    event = request("ops.purge_requested", {"prefix": "p:", **data})
    action = run_one(purge_rules(tmp_path / "rules", target), registry, event)

    assert (action.outcome, action.result) == (
        "ok",
        {"removed": len(keys) - len(remaining)},
    )
    assert [key for key in keys if cache.get(f"p:{key}") is not None] == [
        key for key in keys if key in remaining
    ]


# scale and change_tier on Pub/Sub


@pytest.fixture
def announcements(pubsub_emulator_host: str, project_id: str) -> str:
    """Create the announcement topics, each with a subscription; return the project."""
    for topic in ("scaling-applied", "tier-changed"):
        provision(project_id, topic, f"{topic}-kept", f"{topic}-dl", f"{topic}-dl-kept")
    return project_id


def publishing_registry(directory: Path, project: str) -> HandlerRegistry:
    """Build a registry whose scale and change_tier publish to the emulator."""
    return configured_registry(
        directory,
        f"project: {project}\n"
        "handlers:\n"
        "  scale: {publish_topic: scaling-applied}\n"
        "  change_tier: {publish_topic: tier-changed}\n",
    )


def pull_all(project: str, subscription: str, count: int) -> list[Any]:
    """Pull and acknowledge exactly `count` messages."""
    received: list[Any] = []
    with PubSubSource(project, subscription) as source:
        while len(received) < count:
            batch = source.pull(timeout=5)
            assert batch, f"only {len(received)} of {count} messages arrived"
            source.ack([message.ack_id for message in batch])
            received.extend(batch)
        assert source.pull(max_messages=10, timeout=1) == []
    return received


@pytest.mark.emulator
def test_scale_publishes_scaling_applied_cloudevent(
    announcements: str, ruleset: RuleSet, tmp_path: Path
) -> None:
    """A scale action publishes one structured scaling.applied event."""
    registry = publishing_registry(tmp_path, announcements)
    try:
        event = request("ops.scale_requested", {"target": "api", "who": "ann"})
        action = run_one(ruleset, registry, event)
    finally:
        registry.close()

    [message] = pull_all(announcements, "scaling-applied-kept", 1)
    published = decode_message(
        message.data, message.attributes, message.message_id, 0.0, "unused"
    )

    assert action.outcome == "ok"
    assert message.attributes == {"content-type": "application/cloudevents+json"}
    assert published.to_mapping() == {
        "specversion": "1.0",
        "id": f"{action.id}:scaling.applied",
        "source": "rules-engine",
        "type": "scaling.applied",
        "time": "2024-06-01T12:00:00.000Z",
        "subject": "api",
        "data": {
            "target": "api",
            "previous": 1,
            "replicas": 4,
            "minInstances": 1,
            "maxInstances": 10,
            "factor": 4,
            "reason": "asked by ann",
            "rule": "scale-on-request",
            "tier": "mvp",
        },
    }


@pytest.mark.emulator
def test_change_tier_publishes_tier_changed_cloudevent(
    announcements: str, ruleset: RuleSet, tmp_path: Path
) -> None:
    """A tier change publishes tier.changed with the new tier's configuration."""
    registry = publishing_registry(tmp_path, announcements)
    try:
        event = request("ops.tier_requested", {"to": "growth", "who": "bob"})
        action = run_one(ruleset, registry, event)
    finally:
        registry.close()

    [message] = pull_all(announcements, "tier-changed-kept", 1)
    published = decode_message(
        message.data, message.attributes, message.message_id, 0.0, "unused"
    )

    assert action.outcome == "ok"
    assert published.to_mapping() == {
        "specversion": "1.0",
        "id": f"{action.id}:tier.changed",
        "source": "rules-engine",
        "type": "tier.changed",
        "time": "2024-06-01T12:00:00.000Z",
        "subject": "growth",
        "data": {
            "from": "mvp",
            "to": "growth",
            "reason": "asked by bob",
            "rule": "tier-on-request",
            "config": MVP_TO_GROWTH_CONFIG,
        },
    }


@pytest.mark.emulator
def test_redelivered_trigger_publishes_the_same_event(
    announcements: str, ruleset: RuleSet, tmp_path: Path
) -> None:
    """Two engines given the same event publish byte-identical CloudEvents."""
    registry = publishing_registry(tmp_path, announcements)
    event = request("ops.scale_requested", {"target": "api", "who": "ann"})
    try:
        first = run_one(ruleset, registry, event)
        second = run_one(ruleset, registry, event)
    finally:
        registry.close()

    messages = pull_all(announcements, "scaling-applied-kept", 2)

    assert first.id == second.id
    assert messages[0].data == messages[1].data
    assert orjson.loads(messages[0].data)["id"] == f"{first.id}:scaling.applied"


class _FailingPublisher:
    """A publisher that fails like an unreachable Pub/Sub, then recovers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.published: list[tuple[str, int]] = []

    def publish(
        self,
        event_type: str,
        data: dict[str, Any],
        *,
        action_id: str,
        at: float,
        subject: str | None = None,
    ) -> str:
        if self.failures:
            self.failures -= 1
            raise TransientHandlerError("Pub/Sub is unavailable.")
        event_id = f"{action_id}:{event_type}"
        self.published.append((event_id, data["replicas"]))
        return event_id


def test_failed_publish_leaves_the_scaling_state_as_it_was(ruleset: RuleSet) -> None:
    """A scale whose announcement fails changes nothing, so a retry repeats it."""
    publisher = _FailingPublisher(failures=1)
    registry = HandlerRegistry(builtin_handler_classes())
    registry.register(ScaleHandler, ScaleHandler(publisher=publisher))
    event = request("ops.scale_requested", {"target": "api", "who": "ann"})

    failed_engine = Engine(ruleset, registry)
    [failed] = failed_engine.process(event)
    state_after_failure = failed_engine.handler_state.values
    retry_engine = Engine(ruleset, registry)
    [retried] = retry_engine.process(event)
    failed_engine.close()
    retry_engine.close()

    assert (failed.outcome, failed.error) == ("failed", "Pub/Sub is unavailable.")
    assert state_after_failure == {}
    assert retried.outcome == "ok"
    assert publisher.published == [(f"{failed.id}:scaling.applied", 4)]


# notify webhook


class _Webhook:
    """A local webhook that answers with scripted statuses and keeps requests."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.requests: list[tuple[str, dict[str, str], Any]] = []
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = orjson.loads(self.rfile.read(length))
                webhook.requests.append((self.path, dict(self.headers), body))
                status = webhook.statuses.pop(0) if webhook.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()


@pytest.fixture
def webhook() -> Iterator[_Webhook]:
    """Run a webhook on 127.0.0.1 that fails twice with 500, then accepts."""
    server = _Webhook([500, 500])
    yield server
    server.close()


def test_webhook_alert_is_delivered_after_server_errors(
    webhook: _Webhook, ruleset: RuleSet, tmp_path: Path
) -> None:
    """Two 500 answers are retried; the third attempt delivers the alert."""
    registry = configured_registry(
        tmp_path,
        "handlers:\n"
        "  notify:\n"
        f"    webhook_url: http://127.0.0.1:{webhook.port}/alerts\n"
        "    allowed_hosts: [127.0.0.1]\n"
        "    retries: 3\n"
        "    backoff_seconds: 0.01\n",
    )
    try:
        action = run_one(
            ruleset, registry, request("ops.alert_requested", {"p99": 900})
        )
    finally:
        registry.close()

    text = ":warning: *Checkout is slow*\np99 at 900 ms.\nRecommended: enable caching"
    expected_body = {
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
        "metadata": {
            "event_type": "rules_engine_alert",
            "event_payload": {"rule": "alert-on-request", "action_id": action.id},
        },
    }
    assert (action.outcome, action.result) == (
        "ok",
        {"delivered": "webhook", "status": 200},
    )
    assert [path for path, _, _ in webhook.requests] == ["/alerts"] * 3
    assert [h["Idempotency-Key"] for _, h, _ in webhook.requests] == [action.id] * 3
    assert [body for _, _, body in webhook.requests] == [expected_body] * 3


def test_webhook_host_outside_allowed_hosts_is_refused(tmp_path: Path) -> None:
    """A webhook whose host is not allowed fails the configuration, naming it."""
    path = tmp_path / "engine.yaml"
    path.write_text(
        "handlers:\n"
        "  notify:\n"
        "    webhook_url: http://127.0.0.2:8080/alerts\n"
        "    allowed_hosts: [127.0.0.1]\n"
    )

    with pytest.raises(ConfigurationError) as caught:
        load_config(path, environ={})

    assert str(caught.value) == (
        f"The configuration file {str(path)!r} is invalid: 1 problem.\n"
        f"  {path}:3:18: handlers.notify.webhook_url: The host '127.0.0.2' is "
        "not in allowed_hosts; add it there to let the engine call it."
    )

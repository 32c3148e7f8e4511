"""Tests of editing the rules under a running worker, on the emulators.

The worker runs in a thread of the test, as `rules-engine run` would run
it, while the test publishes orders and edits the rule file between them:
valid, then invalid, then valid again.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.events import format_time
from engine.loader import load_rules
from engine.observability import Observability
from engine.rule_watcher import RuleWatcher
from engine.worker import Worker, WorkerOptions, apply_options
from infra.firestore_state import FirestoreStateStore
from infra.pubsub import (
    STRUCTURED_CONTENT_TYPE,
    PubSubPublisher,
    PubSubSource,
    provision,
)
from tests.engine.conftest import OBSERVABILITY_FIXTURES

pytestmark = pytest.mark.emulator

START = 1_704_067_200.0  # 2024-01-01T00:00:00Z
BROKEN = b'{"specversion":"1.0","id":"broken"'
NAMESPACE = "hot-reload"


def order(number: int) -> bytes:
    """Return order `number`, placed 10 s after the one before it."""
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": f"order-{number}",
            "source": "/shop",
            "type": "shop.order_placed",
            "time": format_time(START + 10 * number),
            "data": {"orderId": f"o-{number}", "total": 20},
        }
    )


@dataclass
class Shop:
    """The project, rules and running worker of one test."""

    project: str
    rules_dir: Path
    worker: Worker
    observability: Observability
    publisher: PubSubPublisher
    thread: threading.Thread
    actions_out: Path

    def publish(self, *bodies: bytes) -> None:
        attributes = {"content-type": STRUCTURED_CONTENT_TYPE}
        self.publisher.publish("events", [(body, attributes) for body in bodies])

    def edit(self, fixture: Path) -> None:
        """Save a rule file over the running one, as an operator would."""
        (self.rules_dir / "shop.yaml").write_text(fixture.read_text())

    def stop(self) -> None:
        """Stop the worker; it commits its last batch before the thread ends."""
        self.worker.stop()
        self.thread.join(60)

    def wait_for_received(self, count: int) -> None:
        self.wait_until(lambda s: s["counts"]["received"] == count, f"{count} received")

    def wait_until(self, done: Callable[[dict[str, Any]], bool], what: str) -> None:
        """Wait until the worker's status satisfies `done`."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = self.observability.status()
            if done(status):
                return
            time.sleep(0.05)
        raise AssertionError(f"The worker did not get to: {what}. Last: {status}")


@pytest.fixture
def shop(
    project_id: str,
    pubsub_emulator_host: str,
    firestore_emulator_host: str,
    tmp_path: Path,
) -> Iterator[Shop]:
    """Start a worker with a rule watcher on a copy of the shop rules."""
    provision(project_id, "events", "engine", "dead-letters", "dead-letters-kept", 10)
    rules_dir = tmp_path / "rules"
    shutil.copytree(OBSERVABILITY_FIXTURES / "rules", rules_dir)
    options = WorkerOptions(
        project=project_id,
        subscription="engine",
        namespace=NAMESPACE,
        dead_letter_topic="dead-letters",
        actions_out=tmp_path / "actions.jsonl",
        commit_interval=0.2,
        pull_timeout=0.2,
        lease_seconds=10,
    )
    observability = Observability()
    watcher = RuleWatcher(rules_dir, prepare=partial(apply_options, options=options))
    with ExitStack() as stack:
        source = stack.enter_context(PubSubSource(project_id, "engine"))
        publisher = stack.enter_context(PubSubPublisher(project_id))
        store = FirestoreStateStore(project_id, NAMESPACE)
        stack.callback(store.close)
        worker = Worker(
            options,
            load_rules(rules_dir),
            store=store,
            source=source,
            publisher=publisher,
            observability=observability,
            watcher=watcher,
        )
        watcher.start()
        stack.callback(watcher.close)
        thread = threading.Thread(target=worker.run, name="worker")
        thread.start()
        # Last in, first out: the worker stops, then the thread is awaited.
        stack.callback(thread.join, 60)
        stack.callback(worker.stop)
        yield Shop(
            project_id,
            rules_dir,
            worker,
            observability,
            publisher,
            thread,
            tmp_path / "actions.jsonl",
        )


def test_rules_edited_under_a_running_worker_lose_no_event(shop: Shop) -> None:
    """Valid, invalid, valid: each order runs under the rules then current."""
    edits = OBSERVABILITY_FIXTURES / "edits"
    original = shop.worker.ruleset.version

    shop.publish(order(1), order(2), order(3), BROKEN)
    shop.wait_for_received(4)

    shop.edit(edits / "added_rule.yaml")
    added = load_rules(shop.rules_dir).version
    shop.wait_until(lambda s: s["rules"]["version"] == added, "the added rule")
    shop.publish(order(4), order(5), order(6))
    shop.wait_for_received(7)

    shop.edit(edits / "never_rearms.yaml")
    shop.wait_until(lambda s: s["health"]["rules_stale"], "stale rules")
    shop.publish(order(7), order(8))
    shop.wait_for_received(9)

    shop.edit(OBSERVABILITY_FIXTURES / "rules" / "shop.yaml")
    shop.wait_until(
        lambda s: s["rules"]["version"] == original and not s["health"]["rules_stale"],
        "the original rules",
    )
    # Order 2 again, as Pub/Sub may deliver it again: a duplicate.
    shop.publish(order(9), order(10), order(2))
    shop.wait_for_received(12)
    shop.stop()

    checkpoint = FirestoreStateStore(shop.project, NAMESPACE).load()
    assert checkpoint is not None
    processed = {event_id for _, event_id in checkpoint.state["engine"]["seen"]}
    dead = PubSubSource(shop.project, "dead-letters-kept").pull(10, timeout=5)
    actions = [
        orjson.loads(line) for line in shop.actions_out.read_bytes().splitlines()
    ]

    assert processed == {f"order-{number}" for number in range(1, 11)}
    assert [(m.data, m.attributes["reason"]) for m in dead] == [
        (BROKEN, "invalid_json")
    ]
    # order-echo exists from the first valid edit until the last one; the
    # invalid edit in between leaves it running. order-burst's window kept
    # counting across the reload: orders 1-3 before it, 4-6 after.
    assert sorted((a["rule"], a["trigger"]["event_id"]) for a in actions) == [
        ("order-burst", "order-6"),
        ("order-echo", "order-4"),
        ("order-echo", "order-5"),
        ("order-echo", "order-6"),
        ("order-echo", "order-7"),
        ("order-echo", "order-8"),
    ]
    counts = shop.observability.status()["counts"]
    assert {name: counts[name] for name in ("received", "accepted", "rejected")} == {
        "received": 12,
        "accepted": 11,
        "rejected": 1,
    }
    assert (counts["duplicates"], counts["actions"]) == (1, 6)

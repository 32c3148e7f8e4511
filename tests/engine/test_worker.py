"""Tests of the streaming worker against the Pub/Sub and Firestore emulators.

The stream is the start of the real demo stream, published with one
ordering key to a subscription with message ordering, so that Pub/Sub
delivers it in publish order, redeliveries included. A worker then owes
exactly what `replay` computes from the same lines, however often it is
killed, restarted or joined by a second worker.
"""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest
from google.cloud import firestore, pubsub_v1

from engine import lease_keeper
from engine.errors import HandlerError, TransientHandlerError, TransientStateError
from engine.health_probe import BackendProbe, pubsub_check
from engine.loader import load_rules
from engine.observability import Observability
from engine.replay import replay_stream
from engine.worker import PUBSUB, Worker, WorkerOptions
from handlers.base import ActionRequest, HandlerContext
from handlers.cache import InvalidateCacheHandler
from handlers.notify import NotifyHandler
from handlers.registry import HandlerRegistry
from infra.emulators import LOOPBACK
from infra.firestore_state import (
    CommitReport,
    FirestoreStateStore,
    Lease,
    StateCommit,
)
from infra.pubsub import PubSubPublisher, PubSubSource

pytestmark = pytest.mark.emulator

ROOT = Path(__file__).parents[2]
RULES = ROOT / "rules"
# Enough of the demo stream for two tier changes, two scalings, seven alerts
# and 2,544 actions in all, small enough for a worker run of ten seconds.
STREAM_LINES = 20_000
ORDERING_KEY = "events"
IDLE_SECONDS = "3"
LEASE_SECONDS = "3"


# The stream and what replay makes of it


@dataclass(frozen=True)
class Reference:
    """A slice of the demo stream and the actions replay wrote for it."""

    lines: list[bytes]
    actions: set[bytes]

    def tier_changes(self) -> list[tuple[str, str, str]]:
        """Return (from, to, at) of every tier change, in time order."""
        changes = []
        for line in self.actions:
            record = orjson.loads(line)
            result = record.get("result") or {}
            if record["action"] == "change_tier" and result.get("changed"):
                changes.append((result["from"], result["to"], record["at"]))
        return sorted(changes, key=lambda change: change[2])


@pytest.fixture(scope="session")
def reference(
    demo_stream_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Reference:
    """Replay the first lines of the demo stream once per session."""
    with gzip.open(demo_stream_path, "rb") as stream:
        lines = [line.rstrip(b"\n") for line in itertools.islice(stream, STREAM_LINES)]
    folder = tmp_path_factory.mktemp("worker-reference")
    (folder / "events.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    with (folder / "actions.jsonl").open("wb") as actions:
        replay_stream(folder / "events.jsonl", load_rules(RULES), actions_out=actions)
    written = (folder / "actions.jsonl").read_bytes().splitlines()
    return Reference(lines, set(written))


# Pub/Sub and Firestore of one test


class Backend:
    """The topics, subscriptions and Firestore of one test's project."""

    def __init__(self, project: str, ordered: bool) -> None:
        self.project = project
        self.publisher = pubsub_v1.PublisherClient(
            publisher_options=pubsub_v1.types.PublisherOptions(
                enable_message_ordering=ordered
            )
        )
        self.subscriber = pubsub_v1.SubscriberClient()
        self.firestore = firestore.Client(project=project)
        self.ordered = ordered
        for topic, subscription, ordering in (
            ("events", "engine", ordered),
            ("dead-letters", "dead-letters-kept", False),
        ):
            self.publisher.create_topic(name=self.path("topics", topic))
            self.subscriber.create_subscription(
                request={
                    "name": self.path("subscriptions", subscription),
                    "topic": self.path("topics", topic),
                    "ack_deadline_seconds": 10,
                    "enable_message_ordering": ordering,
                }
            )

    def path(self, kind: str, name: str) -> str:
        return f"projects/{self.project}/{kind}/{name}"

    def publish(self, bodies: list[bytes]) -> list[str]:
        """Publish bodies in order; return their message ids."""
        key = {"ordering_key": ORDERING_KEY} if self.ordered else {}
        topic = self.path("topics", "events")
        futures = [self.publisher.publish(topic, body, **key) for body in bodies]
        return [future.result(timeout=60) for future in futures]

    def pull(self, subscription: str, timeout: float = 3.0) -> list[Any]:
        """Pull and acknowledge whatever arrives within `timeout` seconds."""
        source = PubSubSource(self.project, subscription)
        try:
            messages = source.pull(1000, timeout=timeout)
            source.ack([m.ack_id for m in messages])
        finally:
            source.close()
        return messages

    def processed(self) -> int:
        manifest = FirestoreStateStore(self.project, client=self.firestore)
        found = manifest.read_manifest()
        return found.events_processed if found is not None else 0

    def logged_actions(self) -> dict[str, dict[str, Any]]:
        query = self.firestore.collection("actions").select(
            ["rule", "action", "outcome", "at", "attempts"]
        )
        return {document.id: document.to_dict() for document in query.stream()}

    def document(self, path: str) -> dict[str, Any] | None:
        snapshot = self.firestore.document(path).get()
        return snapshot.to_dict() if snapshot.exists else None

    def tier_history(self) -> list[tuple[str, str, str]]:
        documents = self.firestore.collection("system_config/tier/history").stream()
        changes = [document.to_dict() for document in documents]
        return sorted(
            (change["from"], change["to"], _rfc3339(change["at"])) for change in changes
        )

    def close(self) -> None:
        self.publisher.stop()
        self.subscriber.close()
        self.firestore.close()


@pytest.fixture
def ordered_backend(
    pubsub_emulator_host: str, firestore_emulator_host: str, project_id: str
) -> Iterator[Backend]:
    """Return a project whose engine subscription has message ordering on."""
    backend = Backend(project_id, ordered=True)
    yield backend
    backend.close()


@pytest.fixture
def unordered_backend(
    pubsub_emulator_host: str, firestore_emulator_host: str, project_id: str
) -> Iterator[Backend]:
    """Return a project whose engine subscription delivers in any order."""
    backend = Backend(project_id, ordered=False)
    yield backend
    backend.close()


def _rfc3339(moment: Any) -> str:
    return str(moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"))


# Workers in their own processes


def _start_worker(
    backend: Backend,
    actions_out: Path,
    log_path: Path,
    idle: str | None = IDLE_SECONDS,
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "engine",
        "--log-format=json",
        "--log-level=info",
        "run",
        f"--project={backend.project}",
        "--subscription=engine",
        f"--rules={RULES}",
        "--dead-letter-topic=dead-letters",
        f"--actions-out={actions_out}",
        f"--lease-seconds={LEASE_SECONDS}",
    ]
    if idle is not None:
        command.append(f"--exit-when-idle={idle}")
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            env=dict(os.environ),
        )


def _wait_until(
    condition: Callable[[], bool], timeout: float = 90.0, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen in {timeout} s"
        time.sleep(0.1)


def _lines(paths: list[Path]) -> list[bytes]:
    return [line for path in paths for line in path.read_bytes().splitlines()]


def _log_events(path: Path) -> Counter[str]:
    return Counter(
        orjson.loads(line)["event"] for line in path.read_bytes().splitlines()
    )


def _assert_log_matches(backend: Backend, reference: Reference) -> None:
    """The Firestore action log holds each reference action once, as replayed."""
    expected = {}
    for line in reference.actions:
        record = orjson.loads(line)
        expected[record["id"]] = (record["rule"], record["action"], record["at"])
    logged = {
        action_id: (doc["rule"], doc["action"], _rfc3339(doc["at"]))
        for action_id, doc in backend.logged_actions().items()
    }

    assert logged == expected
    assert backend.processed() == len(reference.lines)
    assert backend.tier_history() == reference.tier_changes()
    tier = backend.document("system_config/tier")
    assert tier is not None
    assert tier["tier"] == reference.tier_changes()[-1][1]


# One worker, start to end


def test_worker_actions_equal_replay_actions(
    ordered_backend: Backend, reference: Reference, tmp_path: Path
) -> None:
    """One uninterrupted worker writes and logs exactly what replay writes."""
    ordered_backend.publish(reference.lines)
    actions_out = tmp_path / "actions.jsonl"

    started = time.monotonic()
    worker = _start_worker(ordered_backend, actions_out, tmp_path / "worker.log")
    status = worker.wait(timeout=180)
    seconds = time.monotonic() - started - float(IDLE_SECONDS)
    written = _lines([actions_out])

    assert status == 0, (tmp_path / "worker.log").read_text()[-2000:]
    assert set(written) == reference.actions
    assert len(written) == len(reference.actions)
    _assert_log_matches(ordered_backend, reference)
    print(f"worker: {len(reference.lines) / seconds:.0f} events/s on the emulators")


def test_a_stream_published_in_order_equals_replay_without_ordering(
    unordered_backend: Backend, reference: Reference, tmp_path: Path
) -> None:
    """Without ordering keys, our publisher still stores the stream in order.

    So on the emulator, whose unordered subscriptions deliver in stored
    order, even an unordered worker decides exactly what replay decides.
    """
    with PubSubPublisher(unordered_backend.project) as publisher:
        publisher.publish("events", ((line, {}) for line in reference.lines))
    actions_out = tmp_path / "actions.jsonl"

    worker = _start_worker(unordered_backend, actions_out, tmp_path / "worker.log")
    status = worker.wait(timeout=180)
    written = _lines([actions_out])

    assert status == 0, (tmp_path / "worker.log").read_text()[-2000:]
    assert set(written) == reference.actions
    assert len(written) == len(reference.actions)
    _assert_log_matches(unordered_backend, reference)


# Interruptions


def test_killing_the_worker_three_times_changes_nothing(
    ordered_backend: Backend, reference: Reference, tmp_path: Path
) -> None:
    """kill -9 at three random points: no action lost, none twice, tier once."""
    ordered_backend.publish(reference.lines)
    rng = random.Random(2015)
    total = len(reference.lines)
    kill_points = sorted(rng.sample(range(total // 10, total * 9 // 10), 3))
    log_path = tmp_path / "workers.log"
    outputs = []

    # The messages a killed worker held come back only once their ack
    # deadline has passed, and the ordered key waits for them; a successor
    # is therefore stopped when all is done, not after idle seconds.
    for number, kill_point in enumerate(kill_points):
        outputs.append(tmp_path / f"actions-{number}.jsonl")
        worker = _start_worker(ordered_backend, outputs[-1], log_path, idle=None)
        _wait_until(
            lambda point=kill_point: ordered_backend.processed() >= point,
            what=f"processing {kill_point} events (log: {log_path})",
        )
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    outputs.append(tmp_path / "actions-last.jsonl")
    last = _start_worker(ordered_backend, outputs[-1], log_path, idle=None)
    _wait_until(
        lambda: ordered_backend.processed() == total, what="processing every event"
    )
    last.send_signal(signal.SIGTERM)
    status = last.wait(timeout=60)
    written = _lines([path for path in outputs if path.exists()])

    assert status == 0, log_path.read_text()[-2000:]
    _assert_log_matches(ordered_backend, reference)
    # A kill between a commit and the file write loses that batch's lines
    # from the file (the log has them); nothing is ever written twice.
    assert len(written) == len(set(written))
    assert set(written) <= reference.actions


def test_two_workers_decide_what_one_decides(
    ordered_backend: Backend, reference: Reference, tmp_path: Path
) -> None:
    """A standby takes over from a leader stopped by SIGTERM, losing nothing."""
    ordered_backend.publish(reference.lines)
    outputs = [tmp_path / "actions-a.jsonl", tmp_path / "actions-b.jsonl"]
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    workers = [
        _start_worker(ordered_backend, out, log)
        for out, log in zip(outputs, logs, strict=True)
    ]

    _wait_until(lambda: ordered_backend.processed() >= len(reference.lines) // 2)
    lease = ordered_backend.document("engines/default/lease/current")
    assert lease is not None
    leader = next(w for w in workers if lease["holder"].endswith(f"-{w.pid}"))
    leader.send_signal(signal.SIGTERM)
    statuses = [worker.wait(timeout=180) for worker in workers]
    written = _lines(outputs)
    manifest = ordered_backend.document("engines/default")

    assert statuses == [0, 0]
    assert manifest is not None and manifest["epoch"] == 2
    # A stop by SIGTERM commits, acknowledges and writes before it exits,
    # so the two files together hold every action exactly once.
    assert sorted(written) == sorted(reference.actions)
    _assert_log_matches(ordered_backend, reference)


class SlowNotifyHandler(NotifyHandler):
    """An alert handler as slow as a webhook that answers after `seconds`."""

    seconds: ClassVar[float] = 0.0
    # How many calls are slow; the rest answer at once.
    slow_calls: ClassVar[int] = 1_000_000

    def execute(
        self, request: ActionRequest, params: Any, context: HandlerContext
    ) -> dict[str, Any]:
        if SlowNotifyHandler.slow_calls > 0:
            SlowNotifyHandler.slow_calls -= 1
            time.sleep(SlowNotifyHandler.seconds)
        return super().execute(request, params, context)


def _slow_worker(
    backend: Backend, out: Path, name: str, lease: float, idle: float = 1.5
) -> Worker:
    registry = HandlerRegistry()
    registry.register(SlowNotifyHandler, SlowNotifyHandler())
    settings = WorkerOptions(
        project=backend.project,
        subscription="engine",
        actions_out=out,
        exit_when_idle=idle,
        lease_seconds=lease,
        worker_id=name,
    )
    return Worker(
        settings,
        load_rules(RULES),
        store=FirestoreStateStore(backend.project),
        source=PubSubSource(backend.project, "engine"),
        registry=registry,
        ordered=backend.ordered,
    )


def _run_leader_then_standby(backend: Backend, workers: list[Worker]) -> list[int]:
    """Run the first worker, the second once it leads; return exit statuses."""
    statuses: list[int] = []
    threads = [
        threading.Thread(target=lambda w=w: statuses.append(w.run())) for w in workers
    ]
    threads[0].start()
    lease_path = "engines/default/lease/current"
    _wait_until(lambda: backend.document(lease_path) is not None, what="a lease")
    threads[1].start()
    for thread in threads:
        thread.join(240)
    # Only after a failure: the statuses are then short of one.
    for worker in workers:
        worker.stop()
    return statuses


def test_alerts_slower_than_the_lease_keep_one_leader(
    ordered_backend: Backend,
    reference: Reference,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each alert outlasts the lease; the leader keeps it and owes replay's actions.

    Its engine thread is busy in the handler for longer than the lease
    while the standby waits for it to expire. The lease changes hands once
    only, when the leader exits idle.
    """
    lease = 2.0
    SlowNotifyHandler.seconds = 1.5 * lease
    ordered_backend.publish(reference.lines)
    outputs = [tmp_path / "actions-a.jsonl", tmp_path / "actions-b.jsonl"]
    workers = [
        _slow_worker(ordered_backend, out, name, lease)
        for out, name in zip(outputs, ("worker-a", "worker-b"), strict=True)
    ]
    statuses: list[int] = []
    threads = [
        threading.Thread(target=lambda w=w: statuses.append(w.run())) for w in workers
    ]

    threads[0].start()
    _wait_until(lambda: ordered_backend.processed() > 0, what="a first commit")
    threads[1].start()
    for thread in threads:
        thread.join(240)
    for worker in workers:
        worker.stop()
    written = _lines([path for path in outputs if path.exists()])
    lease_document = ordered_backend.document("engines/default/lease/current")

    assert statuses == [0, 0]
    assert lease_document is not None and lease_document["epoch"] == 2
    assert sorted(written) == sorted(reference.actions)
    _assert_log_matches(ordered_backend, reference)


def test_a_leader_that_stalls_loses_the_lease_and_nothing_else(
    ordered_backend: Backend,
    reference: Reference,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A leader stuck past the lease is replaced; the stream stays in order.

    The first alert stalls the leader for longer than the keeper allows, so
    the standby takes over and the leader's next commit is refused. The
    messages it held come back to the successor in their order, and the
    two files hold replay's actions. The successor waits long enough for
    them before it counts itself idle.
    """
    lease = 2.0
    monkeypatch.setattr(lease_keeper, "MAX_STALL", 1.5)
    monkeypatch.setattr(SlowNotifyHandler, "seconds", 3 * lease)
    monkeypatch.setattr(SlowNotifyHandler, "slow_calls", 1)
    ordered_backend.publish(reference.lines)
    outputs = [tmp_path / "actions-a.jsonl", tmp_path / "actions-b.jsonl"]
    workers = [
        _slow_worker(ordered_backend, outputs[0], "worker-a", lease),
        _slow_worker(ordered_backend, outputs[1], "worker-b", lease, idle=6.0),
    ]

    statuses = _run_leader_then_standby(ordered_backend, workers)
    written = _lines([path for path in outputs if path.exists()])
    lease_document = ordered_backend.document("engines/default/lease/current")

    assert statuses == [0, 0]
    assert outputs[1].exists()
    # a, then b once a stalled, then a again once b exits idle.
    assert lease_document is not None and lease_document["epoch"] == 3
    assert sorted(written) == sorted(reference.actions)
    _assert_log_matches(ordered_backend, reference)


class DedicatedFirestore:
    """A Firestore emulator of the test's own, restartable on its port.

    The emulator keeps its data in memory, so a restart goes through an
    export and an import, as a real outage would keep committed data.
    """

    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.host = f"{LOOPBACK}:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, import_from: Path | None = None) -> None:
        command = [
            "gcloud",
            "emulators",
            "firestore",
            "start",
            f"--host-port={self.host}",
        ]
        if import_from is not None:
            command.append(f"--import-data={import_from}")
        environ = {
            **os.environ,
            "CLOUDSDK_CONFIG": str(self.folder / "gcloud-config"),
            "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
            "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "true",
        }
        with (self.folder / "emulator.log").open("ab") as log_file:
            self.process = subprocess.Popen(
                command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=environ,
                start_new_session=True,
            )
        _wait_until(self._answers, timeout=60)

    def export(self, project: str) -> Path:
        """Export the project's data; return the metadata file to import."""
        target = self.folder / f"export-{time.monotonic_ns()}"
        target.mkdir()
        request = urllib.request.Request(
            f"http://{self.host}/emulator/v1/projects/{project}:export",
            data=orjson.dumps(
                {
                    "database": f"projects/{project}/databases/(default)",
                    "export_directory": str(target),
                }
            ),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        urllib.request.urlopen(request, timeout=30).close()
        return next(target.rglob("*.overall_export_metadata"))

    def stop(self) -> None:
        if self.process is None:
            return
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.host}/", timeout=1):
                return True
        except (urllib.error.URLError, OSError):
            return False


@pytest.fixture
def dedicated_firestore(tmp_path: Path) -> Iterator[DedicatedFirestore]:
    """Start a Firestore emulator of the test's own on a free port."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port = probe.getsockname()[1]
    emulator = DedicatedFirestore(tmp_path, port)
    emulator.start()
    yield emulator
    emulator.stop()


def test_the_worker_rides_out_a_firestore_restart(
    pubsub_emulator_host: str,
    project_id: str,
    reference: Reference,
    dedicated_firestore: DedicatedFirestore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Firestore goes away mid-stream; the worker retries and loses nothing.

    The idle wait outlasts the subscription's 10 s ack deadline: a freeze
    that lands during a pull leaves its messages with Pub/Sub until then,
    and the ordered key holds back the rest meanwhile.
    """
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", dedicated_firestore.host)
    backend = Backend(project_id, ordered=True)
    backend.publish(reference.lines)
    log_path = tmp_path / "worker.log"
    worker = _start_worker(backend, tmp_path / "actions.jsonl", log_path, idle="15")
    _wait_until(lambda: backend.processed() >= len(reference.lines) // 3)

    # Freeze the worker so that nothing is written between the export and
    # the stop, then let it run into the outage before Firestore returns.
    worker.send_signal(signal.SIGSTOP)
    time.sleep(0.5)
    saved = dedicated_firestore.export(project_id)
    dedicated_firestore.stop()
    worker.send_signal(signal.SIGCONT)
    time.sleep(2)
    dedicated_firestore.start(import_from=saved)
    status = worker.wait(timeout=180)

    assert status == 0, log_path.read_text()[-2000:]
    assert _log_events(log_path)["commit failed"] >= 1
    _assert_log_matches(backend, reference)
    backend.close()


def test_a_worker_stops_when_firestore_comes_back_without_its_data(
    pubsub_emulator_host: str,
    project_id: str,
    reference: Reference,
    dedicated_firestore: DedicatedFirestore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An emptied Firestore ends the run with an error, not a start from nothing."""
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", dedicated_firestore.host)
    backend = Backend(project_id, ordered=True)
    backend.publish(reference.lines)
    log_path = tmp_path / "worker.log"
    worker = _start_worker(backend, tmp_path / "actions.jsonl", log_path)
    _wait_until(lambda: backend.processed() >= len(reference.lines) // 3)

    dedicated_firestore.stop()
    dedicated_firestore.start()
    status = worker.wait(timeout=120)
    last_line = log_path.read_text().splitlines()[-1]
    processed = backend.processed()
    backend.close()

    assert status == 2
    assert last_line.startswith(
        "error: Firestore lost the state of namespace 'default': this worker "
        "saw its lease at epoch 1, and it now finds no lease."
    )
    assert processed == 0


# Message handling, in process


class LossySource(PubSubSource):
    """A subscription whose first acknowledgement is lost: it redelivers."""

    lost = False

    def ack(self, ack_ids: Any) -> None:
        if not self.lost:
            self.lost = True
            self.nack(ack_ids)
            return
        super().ack(ack_ids)


def _profile_event(uid: str, second: int) -> bytes:
    event = {
        "specversion": "1.0",
        "id": f"profile-{uid}",
        "source": "/platform/users",
        "type": "user.profile_updated",
        "time": f"2026-03-01T12:00:{second:02d}Z",
        "data": {"uid": uid},
    }
    return orjson.dumps(event)


def _in_process_worker(
    backend: Backend,
    tmp_path: Path,
    source: PubSubSource | None = None,
    registry: HandlerRegistry | None = None,
    **options: Any,
) -> Worker:
    settings = WorkerOptions(
        project=backend.project,
        subscription="engine",
        dead_letter_topic="dead-letters",
        actions_out=tmp_path / "actions.jsonl",
        exit_when_idle=1.5,
        lease_seconds=5,
        worker_id="in-process",
        **options,
    )
    return Worker(
        settings,
        load_rules(RULES),
        store=FirestoreStateStore(backend.project),
        source=source or PubSubSource(backend.project, "engine"),
        publisher=PubSubPublisher(backend.project),
        registry=registry,
        ordered=backend.ordered,
    )


def test_rejected_repeated_and_redelivered_messages_have_one_effect(
    unordered_backend: Backend, tmp_path: Path
) -> None:
    """Bad messages are dead-lettered; a repeated id and a redelivery count once."""
    bodies = [
        _profile_event("u1", 1),
        _profile_event("u2", 2),
        b'{"specversion": "1.0", "id": ',
        _profile_event("u2", 2),
        b'{"specversion":"1.0","id":"no-source","type":"user.active",'
        b'"time":"2026-03-01T12:00:03Z"}',
        _profile_event("u3", 4),
    ]
    message_ids = unordered_backend.publish(bodies)
    source = LossySource(unordered_backend.project, "engine")

    status = _in_process_worker(unordered_backend, tmp_path, source=source).run()
    written = [orjson.loads(line) for line in _lines([tmp_path / "actions.jsonl"])]
    dead = unordered_backend.pull("dead-letters-kept")

    assert status == 0
    assert source.lost
    assert [(a["params"]["target"], a["outcome"]) for a in written] == [
        ("user:u1", "ok"),
        ("user:u2", "ok"),
        ("user:u3", "ok"),
    ]
    assert len(unordered_backend.logged_actions()) == 3
    assert unordered_backend.processed() == 3
    # The lost acknowledgement sent both bad messages round twice; each
    # copy carries the id of the message it stands for.
    assert Counter(
        (m.attributes["original_message_id"], m.attributes["reason"]) for m in dead
    ) == {(message_ids[2], "invalid_json"): 2, (message_ids[4], "missing_attribute"): 2}
    assert dead[0].attributes["error"].endswith(".")
    # Everything was acknowledged in the end: nothing comes back once the
    # 10-second ack deadline has passed.
    assert unordered_backend.pull("engine", timeout=11) == []


class FlakyCacheHandler(InvalidateCacheHandler):
    """A cache whose first `failures` invalidations fail with `error`."""

    failures: ClassVar[int] = 0
    error: ClassVar[type[HandlerError]] = TransientHandlerError

    def execute(
        self, request: ActionRequest, params: Any, context: HandlerContext
    ) -> dict[str, Any]:
        if FlakyCacheHandler.failures > 0:
            FlakyCacheHandler.failures -= 1
            raise FlakyCacheHandler.error("The cache did not answer in time.")
        return super().execute(request, params, context)


# Each case: how many attempts fail, then the logged outcome and attempts,
# the outcomes written to --actions-out, and the dead letters' reasons.
_FLAKY_CASES = [
    ("one failure is retried", 1, ("ok", 2), ["failed", "ok"], []),
    (
        "an action out of attempts is dead-lettered",
        99,
        ("failed", 3),
        ["failed", "failed", "failed"],
        [("action_failed", "3")],
    ),
]


def _run_flaky(
    backend: Backend,
    tmp_path: Path,
    failures: int,
    retry_backoff: float,
    error: type[HandlerError] = TransientHandlerError,
) -> tuple[int, list[Any], dict[str, Any]]:
    """Run a worker whose cache handler fails `failures` times, on one event.

    Returns the exit status, the actions file's records and the logged
    action document.
    """
    FlakyCacheHandler.failures = failures
    FlakyCacheHandler.error = error
    registry = HandlerRegistry()
    registry.register(FlakyCacheHandler, FlakyCacheHandler())
    backend.publish([_profile_event("u1", 1)])

    status = _in_process_worker(
        backend,
        tmp_path,
        registry=registry,
        max_attempts=3,
        retry_backoff=retry_backoff,
    ).run()
    written = [orjson.loads(line) for line in _lines([tmp_path / "actions.jsonl"])]
    (document,) = backend.logged_actions().values()
    return status, written, document


@pytest.mark.parametrize(
    ("failures", "logged", "outcomes", "dead_letters"),
    [case[1:] for case in _FLAKY_CASES],
    ids=[case[0] for case in _FLAKY_CASES],
)
def test_a_failed_action_is_retried_then_dead_lettered(
    unordered_backend: Backend,
    tmp_path: Path,
    failures: int,
    logged: tuple[str, int],
    outcomes: list[str],
    dead_letters: list[tuple[str, str]],
) -> None:
    """A failing handler gets --max-attempts tries in all, then a dead letter."""
    status, written, document = _run_flaky(
        unordered_backend, tmp_path, failures, retry_backoff=0.1
    )
    dead = unordered_backend.pull("dead-letters-kept")

    assert status == 0
    assert (document["outcome"], document["attempts"]) == logged
    assert [record["outcome"] for record in written] == outcomes
    assert {record["id"] for record in written} == {written[0]["id"]}
    assert [(m.attributes["reason"], m.attributes["attempts"]) for m in dead] == (
        dead_letters
    )


def test_a_failure_no_retry_can_fix_is_dead_lettered_at_once(
    unordered_backend: Backend, tmp_path: Path
) -> None:
    """A HandlerError (say, a webhook's HTTP 400) gets one attempt, not three."""
    status, written, document = _run_flaky(
        unordered_backend, tmp_path, 99, retry_backoff=0.1, error=HandlerError
    )
    dead = unordered_backend.pull("dead-letters-kept")

    assert status == 0
    assert (document["outcome"], document["attempts"]) == ("failed", 1)
    assert [record["outcome"] for record in written] == ["failed"]
    assert [(m.attributes["reason"], m.attributes["attempts"]) for m in dead] == [
        ("action_failed", "1")
    ]


# Idleness and readiness, in process


class OutageStore(FirestoreStateStore):
    """A namespace whose commits fail for `outage` seconds from the first one."""

    def __init__(self, project: str, outage: float) -> None:
        super().__init__(project)
        self.outage = outage
        self.outage_ends: float | None = None
        self.failures = 0

    def commit(self, lease: Lease, commit: StateCommit) -> tuple[Lease, CommitReport]:
        now = time.monotonic()
        if self.outage_ends is None:
            self.outage_ends = now + self.outage
        if now < self.outage_ends:
            self.failures += 1
            raise TransientStateError("Firestore is unavailable for the test.")
        return super().commit(lease, commit)


class TimedAckSource(PubSubSource):
    """A subscription that notes the ack ids it acknowledged, and when."""

    def __init__(self, project: str, subscription: str) -> None:
        super().__init__(project, subscription)
        self.acked: list[str] = []
        self.last_ack = 0.0

    def ack(self, ack_ids: Any) -> None:
        super().ack(ack_ids)
        self.acked += ack_ids
        self.last_ack = time.monotonic()


def test_idle_time_counts_only_once_every_message_is_acknowledged(
    unordered_backend: Backend, tmp_path: Path
) -> None:
    """A commit that retries longer than --exit-when-idle does not end the run.

    The idle time starts when the last acknowledgement has gone out, not
    when the last message arrived.
    """
    unordered_backend.publish([_profile_event("u1", 1), _profile_event("u2", 2)])
    source = TimedAckSource(unordered_backend.project, "engine")
    worker = _in_process_worker(unordered_backend, tmp_path, source=source)
    worker.store = store = OutageStore(unordered_backend.project, outage=2.5)
    worker.options = dataclasses.replace(worker.options, exit_when_idle=1.0)

    status = worker.run()
    stopped = time.monotonic()

    assert status == 0
    assert store.failures >= 3
    assert len(source.acked) == 2
    assert stopped - source.last_ack >= 1.0
    assert unordered_backend.processed() == 2
    assert unordered_backend.pull("engine", timeout=11) == []


def test_a_failed_action_waiting_for_its_retry_keeps_the_worker_running(
    unordered_backend: Backend, tmp_path: Path
) -> None:
    """A retry due after --exit-when-idle is still made before the worker exits."""
    status, written, document = _run_flaky(
        unordered_backend, tmp_path, 1, retry_backoff=2.5
    )

    assert status == 0
    assert (document["outcome"], document["attempts"]) == ("ok", 2)
    assert [record["outcome"] for record in written] == ["failed", "ok"]


def test_readiness_fails_while_commits_fail_and_returns_with_a_commit(
    unordered_backend: Backend, tmp_path: Path
) -> None:
    """/readyz says why while Firestore refuses commits, and recovers after."""
    observability = Observability()
    unordered_backend.publish([_profile_event("u1", 1)])
    worker = _in_process_worker(unordered_backend, tmp_path)
    worker.store = OutageStore(unordered_backend.project, outage=2.0)
    worker.observability = observability
    seen: list[dict[str, Any]] = []

    thread = threading.Thread(target=worker.run, name="worker")
    thread.start()
    _wait_until(
        lambda: observability.readiness()["reason"].startswith("Commits"), timeout=30
    )
    seen.append(observability.readiness())
    _wait_until(lambda: observability.readiness()["ready"], timeout=30)
    seen.append(observability.readiness())
    thread.join(60)

    assert seen == [
        {
            "ready": False,
            "reason": "Commits to Firestore are failing: Firestore is "
            "unavailable for the test.",
        },
        {"ready": True, "reason": ""},
    ]
    assert not thread.is_alive()
    assert unordered_backend.processed() == 1


def test_a_paused_pubsub_is_neither_idle_nor_ready(
    firestore_emulator_host: str,
    project_id: str,
    silent_server: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pulls that get no answer do not end the run as idle; /readyz says why.

    Pub/Sub here accepts connections and never answers, as a paused
    emulator does, so every pull returns nothing, like a quiet stream.
    """
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", silent_server)
    observability = Observability()
    describe, close = pubsub_check(f"projects/{project_id}/subscriptions/engine")
    settings = WorkerOptions(
        project=project_id,
        subscription="engine",
        exit_when_idle=1.0,
        lease_seconds=5,
        worker_id="paused",
    )
    worker = Worker(
        settings,
        load_rules(RULES),
        store=FirestoreStateStore(project_id),
        source=PubSubSource(project_id, "engine"),
        observability=observability,
        probe=BackendProbe({PUBSUB: describe}, observability),
    )
    thread = threading.Thread(target=worker.run, name="worker")

    thread.start()
    # Idle after a second, then five for Pub/Sub's answer that never comes.
    time.sleep(8)
    running = thread.is_alive()
    readiness = observability.readiness()
    worker.stop()
    thread.join(60)
    close()

    assert running
    assert readiness["ready"] is False
    assert readiness["reason"].startswith("Pub/Sub does not answer: 504")
    assert not thread.is_alive()

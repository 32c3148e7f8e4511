"""Tests of the Firestore state store against the Firestore emulator."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.api_core import exceptions as api_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.batch import WriteBatch

from engine.actions import ActionRecord, Explanation, action_id
from engine.errors import StateError, TransientStateError
from infra.firestore_state import (
    CHUNK_BYTES,
    FirestoreStateStore,
    Lease,
    LeaseLostError,
    StateCommit,
    StateLostError,
)

pytestmark = pytest.mark.emulator

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class FakeClock:
    """A UTC wall clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def client(firestore_emulator_host: str, project_id: str) -> Iterator[Any]:
    """Return a Firestore client for a project of the test's own."""
    client = firestore.Client(project=project_id)
    yield client
    client.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def unused_port() -> int:
    """Return a loopback port where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _store(client: Any, clock: FakeClock) -> FirestoreStateStore:
    return FirestoreStateStore(client.project, "test", client=client, clock=clock)


def _record(
    rule: str, at: float, event_id: str, action: str = "notify"
) -> ActionRecord:
    return ActionRecord(
        id=action_id(rule, 0, event_id, at),
        at=at,
        rule=rule,
        action=action,
        params={"severity": "info", "title": f"{rule} fired"},
        trigger_id=event_id,
        trigger_type="metrics.sampled",
        why=Explanation("avg(data.cpuUsage) > 90", 93.5, [event_id], "v7"),
        outcome="ok",
        result={"delivered": "log"},
    )


def _commit(state: dict[str, Any], **extra: Any) -> StateCommit:
    return StateCommit(state=state, rules_version="v7", events_processed=42, **extra)


# Checkpoints


def test_a_large_checkpoint_round_trips_through_several_chunks(
    client: Any, clock: FakeClock
) -> None:
    """A 3.4 MB state that compresses badly is split into three chunks."""
    store = _store(client, clock)
    lease = store.acquire_lease("worker-a", 30)
    assert lease is not None
    noise = random.Random(5).randbytes(1_700_000).hex()
    state = {"engine": {"noise": noise, "clock": 1.5}, "worker": {"processed": 42}}

    _, report = store.commit(lease, _commit(state))
    loaded = FirestoreStateStore(client.project, "test", client=client).load()

    assert loaded is not None
    assert loaded.state == state
    assert report.chunks == 3
    assert report.compressed_bytes > 2 * CHUNK_BYTES
    assert loaded.manifest.chunks == 3
    assert loaded.manifest.seq == 1
    assert loaded.manifest.epoch == 1
    assert loaded.manifest.rules_version == "v7"
    assert loaded.manifest.events_processed == 42
    assert loaded.manifest.updated_at == T0
    assert loaded.manifest.updated_at.utcoffset() == timedelta(0)


def test_a_smaller_checkpoint_deletes_the_chunks_it_no_longer_needs(
    client: Any, clock: FakeClock
) -> None:
    """After a three-chunk checkpoint, a one-chunk one leaves one chunk."""
    store = _store(client, clock)
    lease = store.acquire_lease("worker-a", 30)
    assert lease is not None
    big = {"noise": random.Random(6).randbytes(1_700_000).hex()}

    lease, _ = store.commit(lease, _commit(big))
    store.commit(lease, _commit({"small": True}))
    loaded = store.load()
    chunks = sorted(d.id for d in client.collection("engines/test/chunks").stream())

    assert loaded is not None
    assert loaded.state == {"small": True}
    assert loaded.manifest.seq == 2
    assert chunks == ["0"]


def _flip(chunk: Any) -> bytes:
    data: bytes = chunk.get().get("data")
    return bytes([data[0] ^ 0xFF]) + data[1:]


# Each corruption of a stored chunk, and the words load() answers with.
_CORRUPTIONS = [
    ("flipped byte", lambda chunk: chunk.update({"data": _flip(chunk)}), "checksum"),
    ("deleted chunk", lambda chunk: chunk.delete(), "lacks chunk 1 of commit 1"),
    (
        "chunk of another commit",
        lambda chunk: chunk.update({"seq": 9}),
        "lacks chunk 1",
    ),
]


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [(c[1], c[2]) for c in _CORRUPTIONS],
    ids=[c[0] for c in _CORRUPTIONS],
)
def test_load_refuses_a_checkpoint_whose_chunks_do_not_match(
    client: Any, clock: FakeClock, corrupt: Any, message: str
) -> None:
    """A corrupted chunk is reported, never restored."""
    store = _store(client, clock)
    lease = store.acquire_lease("worker-a", 30)
    assert lease is not None
    store.commit(lease, _commit({"noise": random.Random(7).randbytes(900_000).hex()}))

    corrupt(client.document("engines/test/chunks/1"))

    with pytest.raises(StateError, match=message):
        store.load()


def test_load_returns_none_for_a_namespace_never_written(
    client: Any, clock: FakeClock
) -> None:
    """A new namespace starts empty."""
    assert _store(client, clock).load() is None


# The lease


def test_a_live_lease_keeps_other_workers_out(client: Any, clock: FakeClock) -> None:
    """While the lease runs, a second worker gets nothing; after, a new epoch."""
    first, second = _store(client, clock), _store(client, clock)

    lease_a = first.acquire_lease("worker-a", 30)
    clock.advance(29)
    refused = second.acquire_lease("worker-b", 30)
    clock.advance(2)
    lease_b = second.acquire_lease("worker-b", 30)

    assert lease_a is not None and lease_a.epoch == 1
    assert refused is None
    assert lease_b is not None and lease_b.epoch == 2
    assert lease_b.expires_at == T0 + timedelta(seconds=61)


def test_a_worker_that_lost_the_lease_can_never_write_again(
    client: Any, clock: FakeClock
) -> None:
    """After a takeover, the old holder's commit and renewal are refused."""
    old, new = _store(client, clock), _store(client, clock)
    stale = old.acquire_lease("worker-a", 10)
    assert stale is not None
    stale, _ = old.commit(stale, _commit({"by": "a"}))
    clock.advance(11)
    current = new.acquire_lease("worker-b", 10)
    assert current is not None

    with pytest.raises(LeaseLostError, match="another worker holds it now"):
        old.commit(stale, _commit({"by": "a, late"}, actions=[_record("r", 1.0, "e1")]))
    with pytest.raises(LeaseLostError):
        old.renew_lease(stale, 10)
    new.commit(current, _commit({"by": "b"}))
    loaded = new.load()

    assert loaded is not None
    assert loaded.state == {"by": "b"}
    assert loaded.manifest.epoch == 2
    assert loaded.manifest.seq == 2
    assert list(client.collection("actions").stream()) == []


def test_a_released_lease_passes_to_a_standby_at_once(
    client: Any, clock: FakeClock
) -> None:
    """Releasing ends the lease now instead of at its expiry."""
    leader, standby = _store(client, clock), _store(client, clock)
    lease = leader.acquire_lease("worker-a", 30)
    assert lease is not None

    leader.release_lease(lease)
    taken = standby.acquire_lease("worker-b", 30)

    assert taken is not None
    assert taken.epoch == 2


def test_a_renewal_extends_the_lease(client: Any, clock: FakeClock) -> None:
    """A renewed lease keeps a second worker out past the first expiry."""
    leader, other = _store(client, clock), _store(client, clock)
    lease = leader.acquire_lease("worker-a", 10)
    assert lease is not None

    clock.advance(8)
    renewed = leader.renew_lease(lease, 10)
    clock.advance(8)

    assert renewed.expires_at == T0 + timedelta(seconds=18)
    assert other.acquire_lease("worker-b", 10) is None


def test_every_commit_renews_the_lease(client: Any, clock: FakeClock) -> None:
    """A leader that keeps committing keeps its lease without renewing."""
    leader, other = _store(client, clock), _store(client, clock)
    lease = leader.acquire_lease("worker-a", 10)
    assert lease is not None

    clock.advance(8)
    committed, _ = leader.commit(lease, _commit({}))
    clock.advance(8)

    assert committed.expires_at == T0 + timedelta(seconds=18)
    assert other.acquire_lease("worker-b", 10) is None


# The action log, mirrors and metrics


def test_the_action_log_is_queryable_by_rule_and_time(
    client: Any, clock: FakeClock
) -> None:
    """actions_by_rule returns one rule's actions within the range, by time."""
    store = _store(client, clock)
    lease = store.acquire_lease("worker-a", 30)
    assert lease is not None
    base = T0.timestamp()
    records = [
        _record("cpu-high", base + 30, "e3"),
        _record("cpu-high", base + 10, "e1"),
        _record("cpu-high", base + 90, "e9"),
        _record("disk-full", base + 20, "e2"),
    ]

    store.commit(lease, _commit({}, actions=records))
    found = store.actions_by_rule("cpu-high", T0, T0 + timedelta(seconds=60), limit=10)

    assert [d["id"] for d in found] == [records[1].id, records[0].id]
    assert found[0] == {
        "id": records[1].id,
        "at": T0 + timedelta(seconds=10),
        "rule": "cpu-high",
        "action": "notify",
        "params": {"severity": "info", "title": "cpu-high fired"},
        "trigger": {"event_id": "e1", "type": "metrics.sampled"},
        "outcome": "ok",
        "result": {"delivered": "log"},
        "why": {
            "condition": "avg(data.cpuUsage) > 90",
            "value": 93.5,
            "events": ["e1"],
            "rules_version": "v7",
        },
        "rules_version": "v7",
        "attempts": 1,
        "committed_at": T0,
    }


def test_an_action_already_logged_is_not_written_again(
    client: Any, clock: FakeClock
) -> None:
    """A second commit of the same action id keeps the first document."""
    store = _store(client, clock)
    lease = store.acquire_lease("worker-a", 30)
    assert lease is not None
    first = _record("cpu-high", T0.timestamp(), "e1")
    lease, _ = store.commit(lease, _commit({}, actions=[first]))
    clock.advance(5)

    again = _record("cpu-high", T0.timestamp(), "e1")
    again.result = {"delivered": "webhook"}
    new = _record("cpu-high", T0.timestamp() + 1, "e2")
    _, report = store.commit(lease, _commit({}, actions=[again, new]))
    kept = client.document(f"actions/{first.id}").get().to_dict()

    assert report.skipped_actions == 1
    assert kept["result"] == {"delivered": "log"}
    assert kept["committed_at"] == T0
    assert client.document(f"actions/{new.id}").get().exists


def test_mirrors_and_metric_minutes_are_written_with_the_checkpoint(
    client: Any, clock: FakeClock
) -> None:
    """Scaling targets, the tier, its history and metric minutes land, in UTC."""
    store = _store(client, clock)
    lease = store.acquire_lease("worker-a", 30)
    assert lease is not None
    at = T0.timestamp()
    change = _record("tier-up", at, "e5", action="change_tier")
    change.params = {"to": "scale", "reason": "growth"}
    change.result = {"changed": True, "from": "growth", "to": "scale", "config": {}}
    handler_state = {
        ("scaling_targets", "payments"): {"replicas": 4, "at": at, "rule": "burst"},
        ("system_config", "tier"): {"tier": "scale", "previous": "growth", "at": at},
        ("system_config", "tier_history"): [{"from": "growth", "to": "scale"}],
    }

    lease, _ = store.commit(
        lease,
        _commit(
            {},
            actions=[change],
            handler_state=handler_state,
            metric_samples={"2026-03-01T12:00": {"cpuUsage": 93.5}},
        ),
    )
    store.commit(
        lease, _commit({}, metric_samples={"2026-03-01T12:00": {"activeUsers": 812}})
    )

    def read(path: str) -> dict[str, Any]:
        return client.document(path).get().to_dict()  # type: ignore[no-any-return]

    assert read("scaling_targets/payments") == {
        "replicas": 4,
        "at": T0,
        "rule": "burst",
    }
    assert read("system_config/tier") == {
        "tier": "scale",
        "previous": "growth",
        "at": T0,
    }
    assert read(f"system_config/tier/history/{change.id}") == {
        "from": "growth",
        "to": "scale",
        "at": T0,
        "rule": "tier-up",
        "reason": "growth",
        "trigger": {"event_id": "e5", "type": "metrics.sampled"},
    }
    assert read("metric_history/2026-03-01T12:00") == {
        "minute": T0,
        "values": {"cpuUsage": 93.5, "activeUsers": 812},
        "expire_at": T0 + timedelta(days=30),
    }


# Failures


@pytest.fixture
def lose_answer(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Return a switch: the next batch lands, but its answer never arrives."""
    commit = WriteBatch.commit
    armed: list[bool] = []

    def commit_then_drop(self: WriteBatch, *args: Any, **kwargs: Any) -> Any:
        results = commit(self, *args, **kwargs)
        if armed:
            armed.clear()
            raise api_exceptions.ServiceUnavailable("The connection was reset.")
        return results

    monkeypatch.setattr(WriteBatch, "commit", commit_then_drop)
    return lambda: armed.append(True)


def test_a_commit_whose_answer_was_lost_is_recognised_as_its_own(
    client: Any, clock: FakeClock, lose_answer: Callable[[], None]
) -> None:
    """The retry finds the lease moved by its own write and carries on."""
    store = _store(client, clock)
    lease = store.acquire_lease("worker-a", 30)
    assert lease is not None
    record = _record("cpu-high", T0.timestamp(), "e1")

    lose_answer()
    with pytest.raises(TransientStateError):
        store.commit(lease, _commit({"n": 1}, actions=[record]))
    _, report = store.commit(lease, _commit({"n": 1}, actions=[record]))
    loaded = store.load()

    assert report.skipped_actions == 1
    assert loaded is not None
    assert loaded.state == {"n": 1}
    assert loaded.manifest.seq == 2


def test_a_takeover_during_a_lost_answer_stops_the_old_holder(
    client: Any, clock: FakeClock, lose_answer: Callable[[], None]
) -> None:
    """When the lease moved on meanwhile, the retry is refused."""
    old, new = _store(client, clock), _store(client, clock)
    lease = old.acquire_lease("worker-a", 10)
    assert lease is not None

    lose_answer()
    with pytest.raises(TransientStateError):
        old.commit(lease, _commit({"by": "a"}))
    clock.advance(11)
    assert new.acquire_lease("worker-b", 10) is not None

    with pytest.raises(LeaseLostError, match="moved to 'worker-b'"):
        old.commit(lease, _commit({"by": "a, again"}))


# Lost state


def _erase(client: Any, paths: list[str]) -> None:
    """Delete documents, as an emulator restarted without its data would."""
    for path in paths:
        client.document(path).delete()


_LEASE = "engines/test/lease/current"
_MANIFEST = "engines/test"
# Each case: what vanished, the call that finds out, and what it says.
_LOSSES = [
    (
        "the lease, at acquisition",
        [_LEASE, _MANIFEST],
        lambda store, lease: store.acquire_lease("worker-a", 30),
        "Firestore lost the state of namespace 'test': this worker saw its "
        "lease at epoch 1, and it now finds no lease. The worker stops rather "
        "than start again from an empty checkpoint; restore the data, or "
        "delete the namespace to start it anew.",
    ),
    (
        "the manifest, at load",
        [_MANIFEST],
        lambda store, lease: store.load(),
        "Firestore lost the checkpoint of namespace 'test': this worker saw "
        "commit 1, and the manifest now is missing. The worker stops rather "
        "than go on from older or empty state; restore the data, or delete "
        "the namespace to start it anew.",
    ),
]


@pytest.mark.parametrize(
    ("paths", "call", "message"),
    [case[1:] for case in _LOSSES],
    ids=[case[0] for case in _LOSSES],
)
def test_a_store_that_saw_its_namespace_refuses_to_start_it_anew(
    client: Any, clock: FakeClock, paths: list[str], call: Any, message: str
) -> None:
    """Vanished documents are an error that says so, never an empty start."""
    store = _store(client, clock)
    lease = store.acquire_lease("worker-a", 30)
    assert lease is not None
    store.commit(lease, _commit({"n": 1}))
    clock.advance(31)

    _erase(client, paths)

    with pytest.raises(StateLostError) as raised:
        call(store, lease)
    assert str(raised.value) == message


def test_a_lost_answer_then_lost_data_stops_the_holder(
    client: Any, clock: FakeClock, lose_answer: Callable[[], None]
) -> None:
    """A retry that finds no lease at all says the data was lost."""
    store = _store(client, clock)
    lease = store.acquire_lease("worker-a", 10)
    assert lease is not None

    lose_answer()
    with pytest.raises(TransientStateError):
        store.commit(lease, _commit({"n": 1}))
    _erase(client, [_LEASE, _MANIFEST])

    with pytest.raises(StateLostError, match="now finds no lease"):
        store.commit(lease, _commit({"n": 1}))


def test_a_standby_that_saw_the_lease_refuses_an_erased_namespace(
    client: Any, clock: FakeClock
) -> None:
    """The standby stops too; a process that never saw it starts epoch 1."""
    leader, standby = _store(client, clock), _store(client, clock)
    assert leader.acquire_lease("worker-a", 10) is not None
    assert standby.acquire_lease("worker-b", 10) is None
    clock.advance(11)

    _erase(client, [_LEASE])

    with pytest.raises(StateLostError, match="saw its lease at epoch 1"):
        standby.acquire_lease("worker-b", 10)
    fresh = _store(client, clock).acquire_lease("worker-c", 10)
    assert fresh is not None and fresh.epoch == 1


def test_an_unreachable_firestore_raises_a_transient_error_at_once(
    firestore_emulator_host: str,
    project_id: str,
    monkeypatch: pytest.MonkeyPatch,
    unused_port: int,
) -> None:
    """Connection refused becomes TransientStateError within seconds."""
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{unused_port}")
    store = FirestoreStateStore(project_id, "test", request_timeout=3)
    lease = Lease("worker-a", 1, T0, T0)
    started = time.monotonic()

    with pytest.raises(TransientStateError, match="a retry may succeed"):
        store.read_lease()
    with pytest.raises(TransientStateError):
        store.commit(lease, _commit({}))

    assert time.monotonic() - started < 10

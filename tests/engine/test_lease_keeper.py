"""Tests of the lease keeper against the Firestore emulator, on the wall clock."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from google.cloud import firestore
from structlog.testing import capture_logs

from engine.errors import StateError
from engine.lease_keeper import LeaseKeeper
from infra.firestore_state import (
    FirestoreStateStore,
    Lease,
    LeaseLostError,
    StateCommit,
)

pytestmark = pytest.mark.emulator

LEASE_SECONDS = 1.0


@pytest.fixture
def client(firestore_emulator_host: str, project_id: str) -> Iterator[Any]:
    """Return a Firestore client for a project of the test's own."""
    client = firestore.Client(project=project_id)
    yield client
    client.close()


def _store(client: Any) -> FirestoreStateStore:
    return FirestoreStateStore(client.project, "test", client=client)


def _commit(store: FirestoreStateStore, keeper: LeaseKeeper) -> int:
    """Commit an empty checkpoint through the keeper; return its sequence."""
    commit = StateCommit(state={}, rules_version="v1", events_processed=0)
    report = keeper.write(lambda lease: store.commit(lease, commit))
    return report.seq


def test_the_keeper_holds_the_lease_while_nobody_commits(client: Any) -> None:
    """Three lease lengths without a commit: no other worker can take over."""
    store = _store(client)
    lease = store.acquire_lease("leader", LEASE_SECONDS)
    assert lease is not None
    keeper = LeaseKeeper(store, lease, LEASE_SECONDS)
    keeper.start()

    time.sleep(3 * LEASE_SECONDS)
    taken = _store(client).acquire_lease("standby", LEASE_SECONDS)
    seqs = [_commit(store, keeper) for _ in range(2)]
    held = keeper.stop()

    assert taken is None
    assert seqs == [1, 2]
    assert keeper.lost is None
    assert held is not None and held.epoch == 1


def test_commits_and_renewals_take_turns_without_refusing_each_other(
    client: Any,
) -> None:
    """Commits from another thread, renewals between them: the lease stays held."""
    store = _store(client)
    lease = store.acquire_lease("leader", LEASE_SECONDS)
    assert lease is not None
    keeper = LeaseKeeper(store, lease, LEASE_SECONDS)
    keeper.start()
    seqs: list[int] = []

    def commit_often() -> None:
        deadline = time.monotonic() + 2 * LEASE_SECONDS
        while time.monotonic() < deadline:
            seqs.append(_commit(store, keeper))
            time.sleep(0.05)

    thread = threading.Thread(target=commit_often)
    thread.start()
    thread.join(30)
    keeper.stop()

    assert keeper.lost is None
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(seqs) >= 10


def test_a_stalled_worker_loses_the_lease_to_a_standby(client: Any) -> None:
    """Without progress the keeper stops renewing, and a standby takes over."""
    store = _store(client)
    lease = store.acquire_lease("leader", LEASE_SECONDS)
    assert lease is not None
    lost = threading.Event()
    keeper = LeaseKeeper(store, lease, LEASE_SECONDS, on_lost=lost.set, max_stall=0.2)
    keeper.start()

    time.sleep(2 * LEASE_SECONDS)
    successor = _store(client).acquire_lease("standby", LEASE_SECONDS)
    keeper.mark_progress()
    lost.wait(5)
    held = keeper.stop()

    assert successor is not None and successor.epoch == 2
    assert lost.is_set()
    assert isinstance(keeper.lost, LeaseLostError)
    assert held is None
    with pytest.raises(LeaseLostError):
        _commit(store, keeper)


class RefusingStore(FirestoreStateStore):
    """A namespace whose first `refusals` renewals are refused."""

    def __init__(self, client: Any, refusals: int) -> None:
        super().__init__(client.project, "test", client=client)
        self.refusals = refusals

    def renew_lease(self, lease: Lease, seconds: float) -> Lease:
        if self.refusals > 0:
            self.refusals -= 1
            raise StateError("Firestore refused a write: permission denied.")
        return super().renew_lease(lease, seconds)


def test_a_refused_renewal_is_logged_and_the_keeper_goes_on(client: Any) -> None:
    """A refusal is not a loss: the keeper renews again at its next turn."""
    store = RefusingStore(client, refusals=1)
    lease = store.acquire_lease("leader", LEASE_SECONDS)
    assert lease is not None
    keeper = LeaseKeeper(store, lease, LEASE_SECONDS)

    with capture_logs() as logs:
        keeper.start()
        time.sleep(2 * LEASE_SECONDS)
        held = keeper.stop()

    assert store.refusals == 0
    assert keeper.lost is None
    assert held is not None and held.expires_at > lease.expires_at
    assert [log["event"] for log in logs] == ["lease renewal refused"]

"""Keep the leader's lease alive while its engine thread is busy.

Every commit renews the lease, but a handler that waits on a slow webhook
holds the engine thread, and with it the next commit, for as long as it
takes: three tries of a five-second timeout outlived a 30-second lease
with two alerts in one batch, and the standby took over from a worker
that was working normally. `LeaseKeeper` renews the lease from a thread
of its own, on a schedule, whatever the engine thread is doing.

Why the renewals cannot break fencing:

1. Every write that carries the lease (the keeper's renewals and the
   committer's commits) goes through `LeaseKeeper.write`, one at a time
   under one lock, and starts from the lease as the write before it left
   it. Two writers holding different versions of the lease document
   would otherwise refuse each other's writes as if another worker had
   taken over.
2. The keeper renews only the lease this worker holds, by its epoch and
   version, as `FirestoreStateStore.renew_lease` checks: it can keep a
   lease alive but never take one.
3. It renews only while the engine thread makes progress. A thread stuck
   for longer than `max_stall` (a hung call, a deadlock) lets the lease
   expire, so that a standby takes over from a worker that no longer
   works; a slow handler call is far shorter.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

import structlog

from engine.errors import StateError, TransientStateError
from infra.firestore_state import FirestoreStateStore, Lease, LeaseLostError

__all__ = ["MAX_STALL", "LeaseKeeper"]

log = structlog.get_logger(__name__)

T = TypeVar("T")

# The longest the engine thread may spend on one event, its handler calls
# included, before the keeper stops renewing. A notify webhook that times
# out every try takes about 16.5 s with the default settings.
MAX_STALL = 120.0


class LeaseKeeper:
    """Hold the worker's lease and renew it every third of its length.

    Args:
        store: the namespace's Firestore state.
        lease: the lease just acquired.
        seconds: the lease length; each renewal extends it by as much.
        on_lost: called from the keeper's thread once the lease is lost.
        max_stall: seconds without `mark_progress` after which the keeper
            stops renewing; `MAX_STALL` by default.
    """

    def __init__(
        self,
        store: FirestoreStateStore,
        lease: Lease,
        seconds: float,
        *,
        on_lost: Callable[[], None] = lambda: None,
        max_stall: float | None = None,
    ) -> None:
        self._store = store
        self._lease = lease
        self._seconds = seconds
        self._on_lost = on_lost
        self._max_stall = MAX_STALL if max_stall is None else max_stall
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._lost: LeaseLostError | None = None
        now = time.monotonic()
        self._renewed_at = now
        self._progress_at = now
        self._stall_logged = False
        self._thread = threading.Thread(
            target=self._run, name="lease-keeper", daemon=True
        )

    @property
    def lost(self) -> LeaseLostError | None:
        """Return why the lease was lost, or None while it is held."""
        return self._lost

    def start(self) -> None:
        """Start renewing in the background."""
        self._thread.start()

    def stop(self) -> Lease | None:
        """Stop renewing; return the lease still held, or None if lost."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()
        with self._lock:
            return self._lease if self._lost is None else None

    def mark_progress(self) -> None:
        """Tell the keeper that the engine thread is still working."""
        self._progress_at = time.monotonic()

    def write(self, fenced: Callable[[Lease], tuple[Lease, T]]) -> T:
        """Make one write that carries the lease; keep the lease it returns.

        Raises:
            LeaseLostError: the lease was lost, by this write or before it.
            TransientStateError: Firestore is unreachable for now.
        """
        with self._lock:
            if self._lost is not None:
                raise self._lost
            try:
                lease, result = fenced(self._lease)
            except LeaseLostError as error:
                self._lost = error
                raise
            self._lease, self._renewed_at = lease, time.monotonic()
        return result

    # The keeper's thread

    def _run(self) -> None:
        interval = self._seconds / 3
        # Checked twice per interval, so that a renewal is never more than
        # half an interval late after a commit's own.
        while not self._stopped.wait(interval / 2):
            now = time.monotonic()
            if now - self._renewed_at < interval:
                continue
            if now - self._progress_at > self._max_stall:
                self._warn_stalled(now - self._progress_at)
                continue
            self._stall_logged = False
            try:
                self.write(self._renew)
            except TransientStateError as error:
                log.warning("lease renewal failed", error=str(error))
            except LeaseLostError:
                self._on_lost()
                return
            except StateError as error:
                # Refused, not lost (a permission, say): the next commit
                # meets the same refusal and ends the run with it.
                log.error("lease renewal refused", error=str(error))

    def _renew(self, lease: Lease) -> tuple[Lease, None]:
        return self._store.renew_lease(lease, self._seconds), None

    def _warn_stalled(self, seconds: float) -> None:
        if self._stall_logged:
            return
        self._stall_logged = True
        log.warning(
            "lease left to expire",
            epoch=self._lease.epoch,
            stalled_seconds=round(seconds, 1),
        )

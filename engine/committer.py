"""Commit the worker's batches in the background; settle messages after each.

The worker's thread owns the engine: it evaluates a batch, takes the
checkpoint and hands both to `Committer`, then evaluates the next batch
while this one is written. A commit thread writes one batch at a time, in
order, retrying with back-off while Firestore is away; once a batch is
durable it writes its actions to the actions file and passes its messages
to a settling thread, which acknowledges them. The next commit does not
wait for those acknowledgements.

Why this keeps the delivery guarantees:

1. A message is acknowledged only by the settling thread, and only after
   the commit that holds its event returned.
2. One commit at a time, in the order the worker took its checkpoints:
   the worker submits the next batch only once the previous one is done,
   so commits never race on the lease or the checkpoint's sequence.
3. A commit hands back what its retries saw: the batch made durable, or
   the error that ends it (`LeaseLostError`, `StateError`), which the
   worker's thread raises or acts on the next time it looks.
4. Every commit carries the lease through `LeaseKeeper.write`, which
   takes turns with the keeper's own renewals and hands each write the
   lease as the one before it left it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

import structlog

from engine.actions import ActionRecord, encode_record
from engine.errors import StateError, TransientStateError
from engine.prefetch import Prefetcher
from infra.firestore_state import (
    CommitReport,
    FirestoreStateStore,
    StateCommit,
)
from infra.pubsub import PubSubSource, SourceError

if TYPE_CHECKING:
    from engine.lease_keeper import LeaseKeeper
    from engine.observability import Observability

__all__ = ["Batch", "Committed", "Committer"]

log = structlog.get_logger(__name__)

# While a commit is retried, held messages get this much more time, this
# often, so that Pub/Sub does not hand them to another worker meanwhile.
_EXTEND_SECONDS = 60
_EXTEND_EVERY = 20.0
_BACKOFF_FIRST, _BACKOFF_MAX = 0.2, 5.0
# How long a stopping worker keeps retrying its last commit.
STOP_GRACE = 30.0
_NOT_READY = "Commits to Firestore are failing: {error}"


@dataclass
class Batch:
    """One commit's worth: the state to write and the messages it settles."""

    commit: StateCommit
    ack: list[str] = field(default_factory=list)
    nack: list[str] = field(default_factory=list)
    # New and retried actions, for the actions file once durable.
    records: list[ActionRecord] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class Committed:
    """A batch made durable, with what its commit wrote."""

    batch: Batch
    report: CommitReport
    seconds: float


class Committer:
    """Write batches to Firestore one at a time, then acknowledge them.

    Args:
        store: the namespace's Firestore state; the commit thread is its
            only user while a commit is in flight.
        source: the subscription, to acknowledge and extend messages.
        prefetcher: the messages held, to extend and release.
        stopping: tells whether the worker is stopping, which limits the
            retries of a commit to `STOP_GRACE` seconds.
        on_done: called from the commit thread when a commit's result is
            ready to poll.
        actions_out: the file that gets each committed action, if any.
        observability: told whether commits succeed, and each action.
    """

    def __init__(
        self,
        store: FirestoreStateStore,
        source: PubSubSource,
        prefetcher: Prefetcher,
        *,
        stopping: Callable[[], bool],
        on_done: Callable[[], None],
        actions_out: IO[bytes] | None = None,
        observability: Observability | None = None,
    ) -> None:
        self.store = store
        self.source = source
        self.prefetcher = prefetcher
        self.actions_out = actions_out
        self.observability = observability
        self._stopping = stopping
        self._on_done = on_done
        self._commits = ThreadPoolExecutor(1, thread_name_prefix="worker-commit")
        self._settler = ThreadPoolExecutor(1, thread_name_prefix="worker-ack")
        self._inflight: Future[Committed] | None = None
        self._failing = False

    @property
    def busy(self) -> bool:
        """Tell whether a commit is in flight."""
        return self._inflight is not None

    def submit(self, keeper: LeaseKeeper, batch: Batch) -> None:
        """Start committing `batch` under the keeper's lease; one at a time."""
        assert self._inflight is None, "a commit is already in flight"
        self._inflight = self._commits.submit(self._commit, keeper, batch)
        # Called once the result is there to poll, errors included.
        self._inflight.add_done_callback(lambda _: self._on_done())

    def poll(self, wait: bool = False) -> Committed | None:
        """Return the commit in flight once it is done, else None.

        Raises:
            LeaseLostError: another worker took over; the batch's messages
                are still held, for the worker to return.
            StateError: Firestore refused the commit.
        """
        inflight = self._inflight
        if inflight is None or not (wait or inflight.done()):
            return None
        self._inflight = None
        return inflight.result()

    def settle(self, ack_ids: Sequence[str], nack: bool = False) -> None:
        """Acknowledge (or return) messages now, on the caller's thread."""
        if not ack_ids:
            return
        try:
            if nack:
                self.source.nack(ack_ids)
            else:
                self.source.ack(ack_ids)
        except SourceError as error:
            # Settled or not, Pub/Sub delivers the message again at worst.
            log.warning("acknowledge failed", messages=len(ack_ids), error=str(error))
        finally:
            self.prefetcher.release(ack_ids)

    def wait_settled(self) -> None:
        """Wait until the acknowledgements of finished commits went out."""
        self._settler.submit(lambda: None).result()

    def close(self) -> None:
        """Wait for the commit in flight and the acknowledgements, then stop."""
        self._commits.shutdown(wait=True)
        self._settler.shutdown(wait=True)

    # The commit thread

    def _commit(self, keeper: LeaseKeeper, batch: Batch) -> Committed:
        report = self._write(keeper, batch)
        self._settle_later(batch.ack, nack=False)
        self._settle_later(batch.nack, nack=True)
        self._write_actions(batch.records)
        if self.observability is not None:
            for record in batch.commit.actions:
                self.observability.record_action(record)
        seconds = time.perf_counter() - batch.started
        return Committed(batch, report, seconds)

    def _write(self, keeper: LeaseKeeper, batch: Batch) -> CommitReport:
        """Commit, retrying with back-off while Firestore is away.

        Raises:
            LeaseLostError: another worker took over.
            StateError: Firestore refused the commit, or a stopping worker
                could not commit within its grace period.
        """
        delay, extended_at = _BACKOFF_FIRST, float("-inf")
        give_up_at: float | None = None
        while True:
            try:
                report = keeper.write(
                    lambda lease: self.store.commit(lease, batch.commit)
                )
            except TransientStateError as error:
                self._mark_failing(error)
                now = time.monotonic()
                if self._stopping() and give_up_at is None:
                    give_up_at = now + STOP_GRACE
                if give_up_at is not None and now > give_up_at:
                    raise StateError(
                        f"The worker is stopping and could not commit its last "
                        f"batch within {STOP_GRACE:.0f} seconds: {error}"
                    ) from error
                log.warning("commit failed", error=str(error), retry_in=delay)
                if now - extended_at > _EXTEND_EVERY:
                    self._extend(self.prefetcher.held())
                    extended_at = now
                time.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)
                continue
            self._mark_succeeding()
            return report

    def _mark_failing(self, error: TransientStateError) -> None:
        if self.observability is not None:
            self.observability.set_backend(
                "firestore", ok=False, reason=_NOT_READY.format(error=error)
            )
        self._failing = True

    def _mark_succeeding(self) -> None:
        if not self._failing:
            return
        self._failing = False
        if self.observability is not None:
            self.observability.set_backend("firestore", ok=True)
        log.info("commits succeed again")

    def _extend(self, ack_ids: list[str]) -> None:
        if not ack_ids:
            return
        try:
            self.source.extend(ack_ids, _EXTEND_SECONDS)
        except SourceError as error:
            log.warning("ack deadline extension failed", error=str(error))

    def _settle_later(self, ack_ids: list[str], nack: bool) -> None:
        if ack_ids:
            self._settler.submit(self.settle, ack_ids, nack)

    def _write_actions(self, records: list[ActionRecord]) -> None:
        if self.actions_out is None or not records:
            return
        self.actions_out.write(b"".join(encode_record(r) for r in records))
        self.actions_out.flush()

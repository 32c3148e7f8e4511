"""The streaming worker: Pub/Sub in, rules on event time, Firestore as memory.

Three threads share the work. Pull threads (`engine.prefetch`) keep
several pulls outstanding and queue the messages. The worker's own thread,
which alone touches the engine, takes queued messages, decodes them, puts
the events in event-time order (`engine.reorder`), runs the engine and
takes the checkpoint. A commit thread (`engine.committer`) writes the
checkpoint with the actions to Firestore and only then has the messages
acknowledged, while the worker's thread already evaluates the next batch.
A batch is evaluated once it is full, or once a pull comes back short
(the worker caught up), and committed as soon as the commit before it is
done: a backlog goes in large batches, light traffic in small quick ones.

Delivery guarantees, and what makes them:

1. Nothing is lost: a message is acknowledged only after the commit that
   holds its event returned, the event being either processed into the
   checkpoint or waiting in the reorder buffer, which is part of it. A
   worker that dies leaves its messages unacknowledged, and Pub/Sub
   delivers them again.
2. Effects happen once: a redelivered event finds its id among those the
   restored engine has seen, or in the reorder buffer, and is dropped; an
   action that is produced again has the same deterministic id, and the
   action log keeps the first document of each id. The engine's own state
   (windows, the tier, scaling targets) is only ever the committed one.
   Handlers that call outside systems may run again for a batch that was
   never committed; they send the action id as an idempotency key.
3. One evaluator: only the holder of the Firestore lease pulls and
   processes, and every write it makes is fenced by the lease
   (`infra.firestore_state`), so N workers on one subscription decide
   exactly what one would. Commits run one at a time, in order. The
   lease is renewed from a thread of its own (`engine.lease_keeper`), so
   a slow handler holding the worker's thread does not hand it over; a
   worker that loses it all the same gives its messages back in an order
   the successor can use (`Worker._give_back`).
4. Order: with an ordering key on every message and message ordering on
   the subscription, Pub/Sub delivers in publish order, redeliveries
   included, and the worker's results equal a replay of the stream as
   published. Without, they equal a replay of the stream sorted by time as
   long as no event arrives more than the allowed lateness after a later
   one (`engine.reorder`).

On an ordered subscription the worker pulls only once everything it
pulled before is acknowledged, one pull at a time: messages pulled ahead
and returned on a stop would come back after later ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson
import structlog

from engine.actions import ActionRecord, encode_record
from engine.committer import Batch, Committer
from engine.engine import Engine
from engine.errors import EventRejected, TransientStateError
from engine.events import Event, format_time
from engine.lease_keeper import LeaseKeeper
from engine.loader import RuleSet
from engine.prefetch import Prefetcher
from engine.reorder import ReorderBuffer
from engine.retry_queue import RetryQueue
from handlers.registry import HandlerRegistry
from infra.firestore_documents import minute_key
from infra.firestore_state import (
    FirestoreStateStore,
    LeaseLostError,
    StateCommit,
    freeze_state,
)
from infra.pubsub import (
    PubSubPublisher,
    PubSubSource,
    ReceivedMessage,
    SourceError,
)

if TYPE_CHECKING:
    from engine.health_probe import BackendProbe
    from engine.observability import Observability
    from engine.rule_watcher import RuleWatcher

__all__ = [
    "PUBSUB",
    "Worker",
    "WorkerOptions",
    "apply_options",
    "default_worker_id",
]

log = structlog.get_logger(__name__)

# Dead-letter attribute values are cut to stay far below Pub/Sub's limit.
_MAX_ATTRIBUTE_CHARS = 1000
# The ack deadline that returns the messages of an ordered subscription;
# see `Worker._give_back`.
_RETURN_SECONDS = 1
# Messages held at once, in batches of `batch_size`: the one being
# evaluated, the one being committed and one queued by the pull threads.
_HELD_BATCHES = 3
_NOT_READY = "Firestore does not answer: {error}"
_PULLS_FAILING = "Pulls from Pub/Sub fail: {error}"
# The name of the probe's Pub/Sub check, as `/readyz` gives it.
PUBSUB = "Pub/Sub"
# The worker's thread runs Python for long stretches, and every pull,
# acknowledgement and commit needs the GIL back once gRPC has answered. At
# Python's default switch interval of 5 ms each such hand-over may wait
# 5 ms; measured on the emulator beside a busy thread, a pull took 7.5 ms
# at 5 ms and 2 ms at 0.5 ms.
_SWITCH_INTERVAL = 0.0005


def default_worker_id() -> str:
    """Return `host-pid`, unique among the workers of one namespace."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker runs; `rules-engine run --help` describes each option.

    A batch gathers up to `batch_size` messages, for `commit_interval`
    seconds at most, and less once a pull comes back short. `pulls` is
    how many pulls are kept outstanding on an unordered subscription;
    one keeps Pub/Sub's order of delivery exactly (see `engine.prefetch`),
    and measured on the emulator two were no faster.
    """

    project: str
    subscription: str
    namespace: str = "default"
    dead_letter_topic: str | None = None
    actions_out: Path | None = None
    exit_when_idle: float | None = None
    batch_size: int = 2000
    commit_interval: float = 1.0
    max_attempts: int = 5
    dedup_retention: float | None = 3600.0
    allowed_lateness: float = 0.0
    # Event times may run this far ahead of the worker's wall clock (skew
    # between producers' and the worker's clocks); later ones are rejected.
    max_future: float = 300.0
    lease_seconds: float = 30.0
    retry_backoff: float = 1.0
    pull_timeout: float = 1.0
    pulls: int = 1
    worker_id: str = field(default_factory=default_worker_id)


@dataclass
class _OpenBatch:
    """What the worker's thread gathered since it last submitted a commit."""

    ack: list[str] = field(default_factory=list)
    nack: list[str] = field(default_factory=list)
    records: list[ActionRecord] = field(default_factory=list)
    updated: list[tuple[ActionRecord, int]] = field(default_factory=list)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    received: int = 0
    processed: int = 0
    # When the first message was taken: monotonic, and for the batch
    # latency metric.
    first_at: float | None = None
    started: float = 0.0

    @property
    def empty(self) -> bool:
        """Tell whether no message was taken since the last commit."""
        return self.received == 0


class Worker:
    """Run the engine on a Pub/Sub subscription with its state in Firestore.

    Args:
        options: the worker's settings.
        ruleset: the rules to run.
        store: the namespace's Firestore state.
        source: the subscription's messages.
        publisher: publishes dead letters; needed with a dead-letter topic.
        registry: the action handlers.
        observability: metrics and status, when served.
        ordered: whether the subscription has message ordering on.
        watcher: reloads edited rules between batches, when watching.
        probe: checks Pub/Sub, under the name `PUBSUB`, before the worker
            calls itself idle.
    """

    def __init__(
        self,
        options: WorkerOptions,
        ruleset: RuleSet,
        *,
        store: FirestoreStateStore,
        source: PubSubSource,
        publisher: PubSubPublisher | None = None,
        registry: HandlerRegistry | None = None,
        observability: Observability | None = None,
        ordered: bool = False,
        watcher: RuleWatcher | None = None,
        probe: BackendProbe | None = None,
    ) -> None:
        self.options = options
        self.ruleset = apply_options(ruleset, options)
        self.store = store
        self.source = source
        self.publisher = publisher
        self.registry = registry or HandlerRegistry()
        self.observability = observability
        self.ordered = ordered
        self.watcher = watcher
        self.probe = probe
        self.engine: Engine | None = None
        self.buffer = ReorderBuffer(options.allowed_lateness)
        self.retries = RetryQueue(options.max_attempts, options.retry_backoff)
        self.processed_total = 0
        self.late_events = 0
        self.prefetcher = Prefetcher(
            source,
            pulls=1 if ordered else max(1, options.pulls),
            max_held=_HELD_BATCHES * options.batch_size,
            pull_timeout=options.pull_timeout,
            ahead=not ordered,
        )
        self._committer: Committer | None = None
        self._open = _OpenBatch()
        # Evaluated and frozen, waiting for the commit in flight to end.
        self._ready: Batch | None = None
        self._submitted: Batch | None = None
        # Holds and renews the lease while this worker leads; None otherwise.
        self._keeper: LeaseKeeper | None = None
        self._stopping = False
        self._standby_logged = False
        self._idle_since = time.monotonic()
        self._pull_error: str | None = None
        self._actions_out: IO[bytes] | None = None

    def stop(self) -> None:
        """Ask the worker to commit what it holds and exit."""
        self._stopping = True
        self.prefetcher.wake()

    def run(self) -> int:
        """Process until stopped or idle; return the exit status.

        Raises:
            StateError: Firestore refused a write or a checkpoint is corrupt.
            SourceError: Pub/Sub refused a request (a missing subscription).
        """
        if self.options.actions_out is not None:
            self.options.actions_out.parent.mkdir(parents=True, exist_ok=True)
            self._actions_out = self.options.actions_out.open("ab")
        if self.observability is not None:
            self.observability.set_rules(self.ruleset)
            self.observability.set_ready(True)
        self._committer = Committer(
            self.store,
            self.source,
            self.prefetcher,
            stopping=lambda: self._stopping,
            on_done=self.prefetcher.wake,
            actions_out=self._actions_out,
            observability=self.observability,
        )
        reason = "signal"
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(switch_interval, _SWITCH_INTERVAL))
        try:
            while not self._stopping:
                if self._keeper is None and not self._lead():
                    self._stand_by()
                    continue
                if not self._step():
                    reason = "idle"
                    break
            self._finish()
        finally:
            # After an error: stop the threads, leaving what they hold
            # unacknowledged, for Pub/Sub to deliver again.
            self._stopping = True
            self.prefetcher.stop()
            self._committer.close()
            if self._actions_out is not None:
                self._actions_out.close()
            if self.engine is not None:
                self.engine.close()
            sys.setswitchinterval(switch_interval)
        log.info(
            "worker stopped",
            worker=self.options.worker_id,
            reason=reason,
            processed=self.processed_total,
            late=self.late_events,
        )
        return 0

    # Leadership

    def _lead(self) -> bool:
        """Take the lease if free and continue from the checkpoint."""
        try:
            lease = self.store.acquire_lease(
                self.options.worker_id, self.options.lease_seconds
            )
            if lease is None:
                return False
            checkpoint = self.store.load()
        except TransientStateError as error:
            log.warning("state store unavailable", error=str(error))
            if self.observability is not None:
                reason = _NOT_READY.format(error=error)
                self.observability.set_backend("firestore", ok=False, reason=reason)
            return False
        if self.observability is not None:
            self.observability.set_backend("firestore", ok=True)

        # Live traffic is bounded by the wall clock instead (`max_future`):
        # after a long outage the first event is rightly far ahead.
        engine = Engine(
            self.ruleset, registry=self.registry, max_clock_jump=float("inf")
        )
        self.buffer = ReorderBuffer(self.options.allowed_lateness)
        self.retries.clear()
        self.processed_total = 0
        if checkpoint is not None:
            if checkpoint.manifest.rules_version != self.ruleset.version:
                log.warning(
                    "checkpoint rules differ",
                    saved=checkpoint.manifest.rules_version,
                    running=self.ruleset.version,
                )
            engine.restore(checkpoint.state["engine"])
            saved = checkpoint.state["worker"]
            self.buffer.restore(saved["buffer"])
            self.retries.restore(saved["retries"])
            self.processed_total = saved["processed"]
        self.engine = engine
        self._keeper = LeaseKeeper(
            self.store, lease, self.options.lease_seconds, on_lost=self.prefetcher.wake
        )
        self._keeper.start()
        self._open = _OpenBatch()
        self._idle_since = time.monotonic()
        self._standby_logged = False
        self.prefetcher.start()
        clock = None if engine.clock == float("-inf") else format_time(engine.clock)
        log.info(
            "worker started",
            worker=self.options.worker_id,
            namespace=self.store.namespace,
            rules_version=self.ruleset.version,
            epoch=lease.epoch,
            clock=clock,
            ordered=self.ordered,
            processed=self.processed_total,
        )
        return True

    def _between_batches(self) -> None:
        """Swap in edited rules, with no event taken since the last commit.

        It happens here, on the engine's thread, because durable-rules
        must not be touched from another thread, and with the open batch
        empty because a batch must run under one rules version. A commit
        in flight already holds its checkpoint and version.
        """
        if self.watcher is not None and self.engine is not None:
            self.watcher.reload_engine(self.engine, self.observability)
            # Commits record this version, and a new lease starts from it.
            self.ruleset = self.engine.ruleset

    def _stand_by(self) -> None:
        """Wait as a hot standby; the leader's lease decides for how long."""
        if not self._standby_logged:
            log.info("worker standing by", worker=self.options.worker_id)
            self._standby_logged = True
        if self.observability is not None:
            self.observability.heartbeat()
        time.sleep(min(1.0, self.options.lease_seconds / 3))

    def _release(self) -> None:
        if self._keeper is None:
            return
        lease = self._keeper.stop()
        self._keeper = None
        if lease is None:
            return
        try:
            self.store.release_lease(lease)
        except TransientStateError as error:
            log.warning("lease release failed", error=str(error))

    def _step_down(self, error: LeaseLostError) -> None:
        """Give up after losing the lease: the successor owns the messages.

        Every message this worker holds goes back: those of the commit that
        was refused, those taken since and those still queued.
        """
        log.warning("lease lost", worker=self.options.worker_id, error=str(error))
        committer, keeper = self._committer, self._keeper
        assert committer is not None and keeper is not None
        if committer.busy:
            # A commit that started after the loss fails at once; one that
            # was done before it stays done, its messages acknowledged.
            with contextlib.suppress(LeaseLostError):
                if committer.poll(wait=True) is not None:
                    self._submitted = None
        keeper.stop()
        queued = [message.ack_id for message in self.prefetcher.stop()]
        returned = []
        for batch in (self._submitted, self._ready):
            if batch is not None:
                returned += [*batch.ack, *batch.nack]
        returned += [*self._open.ack, *self._open.nack, *queued]
        # After the acknowledgements of earlier commits, in delivery order.
        committer.wait_settled()
        self._give_back(returned)
        self._open, self._ready, self._submitted = _OpenBatch(), None, None
        if self.engine is not None:
            self.engine.close()
        self.engine, self._keeper = None, None

    def _give_back(self, ack_ids: list[str]) -> None:
        """Return messages that this worker will not commit.

        On an ordered subscription their ack deadline is set to one second
        instead of zero: the emulator delivers a message returned at once
        after the later ones of its key, and the successor would process
        the stream out of order. Measured with messages 0-1 acknowledged
        and 2-4 held: returned at once, they came back as 5..29, 2, 3, 4;
        left one second, or until their deadline, as 2..29.
        """
        assert self._committer is not None
        if not self.ordered:
            self._committer.settle(ack_ids, nack=True)
            return
        try:
            if ack_ids:
                self.source.extend(ack_ids, _RETURN_SECONDS)
        except SourceError as error:
            # They come back, in order, once their ack deadline has passed.
            log.warning(
                "messages not returned", messages=len(ack_ids), error=str(error)
            )
        finally:
            self.prefetcher.release(ack_ids)

    def _finish(self) -> None:
        """Commit everything pulled, then release the lease.

        Messages still queued are taken into the last batch rather than
        returned: on an ordered subscription the emulator delivers a
        returned message after later ones of its key. A stopping worker
        keeps the events waiting in the reorder buffer in its checkpoint
        rather than release them early.
        """
        assert self._committer is not None
        queued = self.prefetcher.stop()
        if self._keeper is None:
            self._give_back([message.ack_id for message in queued])
            return
        if queued:
            self._take(queued)
        while self._keeper is not None and (
            self._committer.busy or self._ready is not None or not self._open.empty
        ):
            if self._ready is None and not self._open.empty:
                self._close(quiet=False, due=[])
            self._collect(wait=True)
        # The last acknowledgements go out before a successor may start.
        self._committer.close()
        self._release()

    # One step

    def _step(self) -> bool:
        """Take what arrived; close the batch when due; commit when free.

        Returns False once the worker has been idle for `exit_when_idle`.
        """
        if self.observability is not None:
            self.observability.heartbeat()
            self._report_pulls()
        self._collect()
        keeper = self._keeper
        if keeper is not None and keeper.lost is not None:
            self._step_down(keeper.lost)
        if self._keeper is None:
            return True
        self._keeper.mark_progress()
        if self._open.empty and self._ready is None:
            self._between_batches()

        room = self.options.batch_size - self._open.received
        messages: list[ReceivedMessage] = []
        if room > 0:
            messages = self.prefetcher.take(room, self._wait_seconds())
            if messages:
                self._take(messages)
            if self.observability is not None:
                self.observability.set_backlog(len(messages))

        # A quiet stream releases everything: nothing earlier is coming. A
        # stopping worker keeps the waiting events in its checkpoint.
        quiet = not messages and self.prefetcher.quiet and not self._stopping
        due = self.retries.due(time.time())
        caught_up = quiet or self.prefetcher.caught_up
        if self._close_due(quiet, caught_up, due):
            self._close(quiet, due)
        return not self._idle_long_enough()

    def _report_pulls(self) -> None:
        """Tell readiness whether pulls fail, when that changed."""
        error = self.prefetcher.pull_error
        if error == self._pull_error:
            return
        self._pull_error = error
        assert self.observability is not None
        reason = _PULLS_FAILING.format(error=error)
        self.observability.set_backend("pulls", ok=error is None, reason=reason)

    def _wait_seconds(self) -> float:
        """Return how long to wait for messages before looking again."""
        batch = self._open
        if batch.first_at is None or self._ready is not None:
            # Nothing to close, or nothing can close before the commit in
            # flight is done, which wakes the wait.
            return self.options.commit_interval
        # Every pull's answer wakes the wait too, a short one included.
        return max(
            0.0, batch.first_at + self.options.commit_interval - time.monotonic()
        )

    def _close_due(self, quiet: bool, caught_up: bool, due: list[str]) -> bool:
        """Tell whether to evaluate the open batch now.

        A batch gathers messages until it is full, until a pull comes back
        short (the worker caught up with the stream) or for
        `commit_interval` at most: a backlog is committed in large
        batches, each commit's cost shared by many events, while light
        traffic waits for no more than what arrived.
        """
        batch = self._open
        if batch.first_at is None:
            # No message: only failed actions due again, or events waiting
            # in the reorder buffer that a quiet stream releases.
            return bool(due) or (quiet and len(self.buffer) > 0)
        return (
            batch.received >= self.options.batch_size
            or caught_up
            or self._stopping
            or time.monotonic() - batch.first_at >= self.options.commit_interval
        )

    def _close(self, quiet: bool, due: list[str]) -> None:
        """Evaluate the open batch, freeze its checkpoint and commit it.

        Only one evaluated batch waits for the committer: with one
        already waiting, this waits for the commit in flight first.
        """
        if self._ready is not None:
            self._collect(wait=True)
            if self._keeper is None:
                return
        events = self.buffer.drain() if quiet else self.buffer.release()
        if events:
            self._process(events)
        if due:
            self._retry_actions(due)
        self._ready = self._freeze()
        self._submit_ready()

    def _idle_long_enough(self) -> bool:
        """Tell whether nothing arrived and nothing was pending for long enough.

        Pending is anything not yet finished: messages pulled and not yet
        acknowledged (queued, being evaluated, being committed or being
        acknowledged), events waiting in the reorder buffer and failed
        actions waiting for another attempt.
        """
        assert self._committer is not None
        now = time.monotonic()
        pending = (
            self.prefetcher.pull_error is not None
            or self.prefetcher.held_count > 0
            or self._committer.busy
            or self._ready is not None
            or not self._open.empty
            or len(self.buffer) > 0
            or len(self.retries) > 0
        )
        if pending:
            self._idle_since = now
            return False
        idle = self.options.exit_when_idle
        if idle is None or now - self._idle_since < idle:
            return False
        # A pull that Pub/Sub leaves unanswered returns no messages, as an
        # idle subscription does: only a Pub/Sub that answers is idle.
        if self.probe is not None and not self.probe.confirm(PUBSUB):
            self._idle_since = time.monotonic()
            return False
        return True

    def _take(self, messages: list[ReceivedMessage]) -> None:
        """Decode messages into the reorder buffer, or dead-letter them."""
        observe = self.observability
        batch = self._open
        if batch.first_at is None:
            batch.first_at, batch.started = time.monotonic(), time.perf_counter()
        batch.received += len(messages)
        dead_letters: list[tuple[ReceivedMessage, EventRejected]] = []
        max_ts = time.time() + self.options.max_future
        for message in messages:
            try:
                event = self.source.decode(message)
            except EventRejected as rejection:
                dead_letters.append((message, rejection))
                if observe is not None:
                    observe.record_event("rejected", rejection.reason)
                continue
            if event.ts > max_ts:
                # Checked before the reorder buffer and the engine, whose
                # clocks one far-future event would move for good.
                future = EventRejected(
                    "time_in_future",
                    f"The event time {event.time} is more than "
                    f"{self.options.max_future:g}s ahead of this worker's clock.",
                )
                dead_letters.append((message, future))
                if observe is not None:
                    observe.record_event("rejected", future.reason)
                continue
            batch.ack.append(message.ack_id)
            outcome = self.buffer.add(event)
            if outcome == "late":
                self.late_events += 1
                log.debug("event arrived late", event_id=event.id, time=event.time)
            elif outcome == "duplicate" and observe is not None:
                observe.record_event("duplicate")
        if dead_letters:
            self._publish_dead_letters(dead_letters)

    def _process(self, events: list[Event]) -> None:
        """Run released events through the engine, gathering what to commit."""
        engine = self.engine
        assert engine is not None
        batch = self._open
        observe = self.observability
        keeper = self._keeper
        assert keeper is not None
        for event in events:
            keeper.mark_progress()
            duplicates = engine.stats.duplicates
            engine.process(event)
            duplicate = engine.stats.duplicates > duplicates
            if observe is not None:
                observe.record_event("duplicate" if duplicate else "accepted")
            if duplicate:
                continue
            batch.processed += 1
            if event.type == "metrics.sampled":
                values = {
                    name: value
                    for name, value in event.data.items()
                    if isinstance(value, int | float) and not isinstance(value, bool)
                }
                batch.metrics.setdefault(minute_key(event.ts), {}).update(values)
        records = engine.take_actions()
        now = time.time()
        for record in records:
            if record.outcome == "failed" and not self.retries.add(record, now):
                # Not worth another attempt, or out of them already.
                self._dead_letter_action(record, 1)
        batch.records += records

    def _retry_actions(self, due: list[str]) -> None:
        """Run failed actions again; dead-letter those out of attempts."""
        engine = self.engine
        assert engine is not None
        for action_id in due:
            record, attempts, exhausted = self.retries.attempt(
                action_id, engine, time.time()
            )
            self._open.updated.append((record, attempts))
            if exhausted:
                self._dead_letter_action(record, attempts)

    # Durability

    def _freeze(self) -> Batch:
        """Take the checkpoint of the open batch and start a new one.

        The checkpoint is serialized here, on the engine's thread: the
        engine goes on changing the structures its snapshot refers to
        while the commit thread writes.
        """
        engine = self.engine
        assert engine is not None
        batch = self._open
        self.processed_total += batch.processed
        handler_state = engine.handler_state
        changed = {
            (space, key): orjson.loads(orjson.dumps(handler_state.get(space, key)))
            for space, key in handler_state.dirty
        }
        handler_state.dirty.clear()
        commit = StateCommit(
            state=freeze_state(
                {
                    "engine": engine.snapshot(),
                    "worker": {
                        "processed": self.processed_total,
                        "buffer": self.buffer.snapshot(),
                        "retries": self.retries.snapshot(),
                    },
                }
            ),
            rules_version=self.ruleset.version,
            events_processed=self.processed_total,
            actions=batch.records,
            updated_actions=batch.updated,
            handler_state=changed,
            metric_samples=batch.metrics,
        )
        records = [*batch.records, *(record for record, _ in batch.updated)]
        started = batch.started
        self._open = _OpenBatch()
        return Batch(commit, batch.ack, batch.nack, records, started)

    def _submit_ready(self) -> None:
        """Hand the evaluated batch to the committer once it is free."""
        committer, keeper, ready = self._committer, self._keeper, self._ready
        assert committer is not None
        if ready is None or keeper is None or committer.busy:
            return
        committer.submit(keeper, ready)
        self._submitted, self._ready = ready, None

    def _collect(self, wait: bool = False) -> None:
        """Take the result of a finished commit: the renewed lease, or its error.

        Raises:
            StateError: Firestore refused the commit.
        """
        committer = self._committer
        assert committer is not None
        try:
            done = committer.poll(wait)
        except LeaseLostError as error:
            self._step_down(error)
            return
        if done is None:
            return
        self._submitted = None
        self._submit_ready()
        if self.observability is not None:
            assert self.engine is not None
            self.observability.record_batch(self.engine, done.seconds)
        report = done.report
        log.debug(
            "batch committed",
            messages=len(done.batch.ack) + len(done.batch.nack),
            actions=len(done.batch.commit.actions),
            seq=report.seq,
            checkpoint_bytes=report.compressed_bytes,
            commit_seconds=round(report.seconds, 4),
        )

    # Dead letters

    def _publish_dead_letters(
        self, dead_letters: list[tuple[ReceivedMessage, EventRejected]]
    ) -> None:
        """Publish rejected messages; acknowledge only those that went out.

        They are published before the commit and acknowledged after it, so
        a crash in between publishes one again rather than losing it; the
        `original_message_id` attribute tells the copies apart.
        """
        batch = [
            (
                message.data,
                {
                    **message.attributes,
                    "reason": rejection.reason,
                    "error": str(rejection)[:_MAX_ATTRIBUTE_CHARS],
                    "original_message_id": message.message_id,
                    "subscription": self.source.subscription_path,
                },
            )
            for message, rejection in dead_letters
        ]
        ack_ids = [message.ack_id for message, _ in dead_letters]
        for message, rejection in dead_letters:
            log.warning(
                "message rejected",
                message_id=message.message_id,
                reason=rejection.reason,
                error=str(rejection),
            )
        if not self._send_dead_letters(batch):
            self._open.nack += ack_ids
            return
        self._open.ack += ack_ids

    def _dead_letter_action(self, record: ActionRecord, attempts: int) -> None:
        body = encode_record(record)
        attributes = {
            "reason": "action_failed",
            "error": (record.error or "")[:_MAX_ATTRIBUTE_CHARS],
            "action_id": record.id,
            "rule": record.rule,
            "trigger_event_id": record.trigger_id,
            "attempts": str(attempts),
        }
        log.warning(
            "action dead-lettered",
            rule=record.rule,
            action_id=record.id,
            attempts=attempts,
            error=record.error,
        )
        self._send_dead_letters([(body, attributes)])

    def _send_dead_letters(self, batch: list[tuple[bytes, dict[str, str]]]) -> bool:
        """Publish to the dead-letter topic; without one, the log is all."""
        topic = self.options.dead_letter_topic
        if topic is None or self.publisher is None:
            return True
        try:
            self.publisher.publish(topic, batch)
        except SourceError as error:
            log.error("dead-letter publish failed", topic=topic, error=str(error))
            return False
        return True


def apply_options(ruleset: RuleSet, options: WorkerOptions) -> RuleSet:
    """Return the rules with the worker's settings in place of the files'."""
    if options.dedup_retention is None:
        return ruleset
    settings = ruleset.settings.model_copy(
        update={"dedup_retention": options.dedup_retention}
    )
    return dataclasses.replace(ruleset, settings=settings)

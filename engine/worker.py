"""The streaming worker: Pub/Sub in, rules on event time, Firestore as memory.

One cycle pulls a batch, decodes it, puts the events in event-time order
(`engine.reorder`), runs the engine, commits the checkpoint with the
actions to Firestore and only then acknowledges the messages.

Delivery guarantees, and what makes them:

1. Nothing is lost: a message is acknowledged only after its event is
   durable, either processed into the checkpoint or waiting in the reorder
   buffer, which is part of it. A worker that dies leaves its messages
   unacknowledged, and Pub/Sub delivers them again.
2. Effects happen once: a redelivered event finds its id among those the
   restored engine has seen, or in the reorder buffer, and is dropped; an
   action that is produced again has the same deterministic id, and the
   action log keeps the first document of each id. The engine's own state
   (windows, the tier, scaling targets) is only ever the committed one.
   Handlers that call outside systems may run again for a batch that was
   never committed; they send the action id as an idempotency key.
3. One evaluator: only the holder of the Firestore lease processes, and
   every write it makes is fenced by the lease (`infra.firestore_state`),
   so N workers on one subscription decide exactly what one would.
4. Order: with an ordering key on every message and message ordering on
   the subscription, Pub/Sub delivers in publish order, redeliveries
   included, and the worker's results equal a replay of the stream as
   published. Without, they equal a replay of the stream sorted by time as
   long as no event arrives more than the allowed lateness after a later
   one (`engine.reorder`).

An ordered subscription delivers the next messages of a key only once the
earlier ones are acknowledged, so on one the worker commits after every
pull; otherwise it gathers several pulls into one commit, and pulls the
next batch while the commit is under way. A batch pulled ahead is only
held: it is processed after the commit, and acknowledged after its own.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import structlog

from engine.actions import ActionRecord, encode_record
from engine.engine import Engine
from engine.errors import EventRejected, StateError, TransientStateError
from engine.events import Event, format_time
from engine.loader import RuleSet
from engine.reorder import ReorderBuffer
from engine.retry_queue import RetryQueue
from handlers.registry import HandlerRegistry
from infra.firestore_documents import minute_key
from infra.firestore_state import (
    CommitReport,
    FirestoreStateStore,
    Lease,
    LeaseLostError,
    StateCommit,
)
from infra.pubsub import (
    PubSubPublisher,
    PubSubSource,
    ReceivedMessage,
    SourceError,
    TransientSourceError,
)

if TYPE_CHECKING:
    from engine.observability import Observability
    from engine.rule_watcher import RuleWatcher

__all__ = ["Worker", "WorkerOptions", "apply_options", "default_worker_id"]

log = structlog.get_logger(__name__)

_MAX_PULL = 1000
# Dead-letter attribute values are cut to stay far below Pub/Sub's limit.
_MAX_ATTRIBUTE_CHARS = 1000
# While a commit is retried, held messages get this much more time, this
# often, so that Pub/Sub does not hand them to another worker meanwhile.
_EXTEND_SECONDS = 60
_EXTEND_EVERY = 20.0
_BACKOFF_FIRST, _BACKOFF_MAX = 0.2, 5.0
# How long a stopping worker keeps retrying its last commit.
_STOP_GRACE = 30.0


def default_worker_id() -> str:
    """Return `host-pid`, unique among the workers of one namespace."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker runs; `rules-engine run --help` describes each option."""

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
    worker_id: str = field(default_factory=default_worker_id)


@dataclass
class _Cycle:
    """The messages of one cycle and what becomes of each."""

    ack: list[str] = field(default_factory=list)
    nack: list[str] = field(default_factory=list)
    dead_letters: list[tuple[ReceivedMessage, EventRejected]] = field(
        default_factory=list
    )
    received: int = 0


@dataclass
class _Progress:
    """What processing one cycle's events produced, to be committed."""

    records: list[ActionRecord] = field(default_factory=list)
    updated: list[tuple[ActionRecord, int]] = field(default_factory=list)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    processed: int = 0


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
        self.engine: Engine | None = None
        self.buffer = ReorderBuffer(options.allowed_lateness)
        self.retries = RetryQueue(options.max_attempts, options.retry_backoff)
        self.processed_total = 0
        self.late_events = 0
        self._lease: Lease | None = None
        self._renewed_at = 0.0
        self._stopping = False
        self._standby_logged = False
        self._last_received = time.monotonic()
        self._actions_out: IO[bytes] | None = None
        self._puller: ThreadPoolExecutor | None = None
        self._pulled_ahead: Future[list[ReceivedMessage]] | None = None

    def stop(self) -> None:
        """Ask the worker to finish its current batch and exit."""
        self._stopping = True

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
        reason = "signal"
        self._puller = ThreadPoolExecutor(1, thread_name_prefix="worker-pull")
        try:
            while not self._stopping:
                if self._lease is None and not self._lead():
                    self._stand_by()
                    continue
                self._between_batches()
                if not self._cycle():
                    reason = "idle"
                    break
            self._return_pulled_ahead()
            self._release()
        finally:
            self._puller.shutdown(cancel_futures=True)
            if self._actions_out is not None:
                self._actions_out.close()
            if self.engine is not None:
                self.engine.close()
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
            return False

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
        self.engine, self._lease = engine, lease
        self._renewed_at = time.monotonic()
        self._last_received = time.monotonic()
        self._standby_logged = False
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
        """Report that the loop is alive and swap in edited rules.

        Both happen here, on the engine's thread and with no batch in
        flight, because durable-rules must not be touched from another
        thread and a batch must run under one rules version.
        """
        if self.observability is not None:
            self.observability.heartbeat()
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

    def _renew_if_due(self) -> None:
        lease = self._lease
        if lease is None:
            return
        if time.monotonic() - self._renewed_at < self.options.lease_seconds / 3:
            return
        try:
            self._lease = self.store.renew_lease(lease, self.options.lease_seconds)
            self._renewed_at = time.monotonic()
        except TransientStateError as error:
            log.warning("lease renewal failed", error=str(error))
        except LeaseLostError as error:
            self._step_down(_Cycle(), error)

    def _release(self) -> None:
        if self._lease is None:
            return
        try:
            self.store.release_lease(self._lease)
        except TransientStateError as error:
            log.warning("lease release failed", error=str(error))
        self._lease = None

    def _step_down(self, cycle: _Cycle, error: LeaseLostError) -> None:
        """Give up after losing the lease: the successor owns the messages."""
        log.warning("lease lost", worker=self.options.worker_id, error=str(error))
        self._settle(cycle.nack + cycle.ack, nack=True)
        self._return_pulled_ahead()
        if self.engine is not None:
            self.engine.close()
        self.engine, self._lease = None, None

    # One cycle

    def _cycle(self) -> bool:
        """Pull, process, commit and acknowledge one batch.

        Returns False once the worker has been idle for `exit_when_idle`.
        """
        started = time.perf_counter()
        messages = self._take_pulled_ahead()
        now = time.monotonic()
        if messages:
            self._last_received = now
        cycle = _Cycle(received=len(messages))
        if self.observability is not None:
            self.observability.set_backlog(len(messages))
        self._sort_messages(messages, cycle)

        # A quiet stream releases everything: nothing earlier is coming. A
        # stopping worker keeps the waiting events in its checkpoint.
        quiet = not messages and not self._stopping
        events = self.buffer.drain() if quiet else self.buffer.release()
        due = self.retries.due(time.time())
        if not (messages or events or due):
            self._renew_if_due()
            idle = self.options.exit_when_idle
            return idle is None or now - self._last_received < idle

        progress = self._process(events)
        self._retry_actions(due, progress)
        self._publish_dead_letters(cycle)
        self._pull_ahead()
        try:
            report = self._commit(progress, cycle)
        except LeaseLostError as error:
            self._step_down(cycle, error)
            return True

        self._write_actions(
            [*progress.records, *(record for record, _ in progress.updated)]
        )
        self._settle(cycle.ack)
        self._settle(cycle.nack, nack=True)
        if self.observability is not None:
            for record in progress.records:
                self.observability.record_action(record)
            assert self.engine is not None
            self.observability.record_batch(self.engine, time.perf_counter() - started)
        self._renew_if_due()
        log.debug(
            "batch committed",
            messages=cycle.received,
            events=len(events),
            actions=len(progress.records),
            seq=report.seq,
            checkpoint_bytes=report.compressed_bytes,
            commit_seconds=round(report.seconds, 4),
        )
        return True

    def _pull_ahead(self) -> None:
        """Start pulling the next batch, to overlap it with the commit.

        Only on an unordered subscription: an ordered one holds back the
        next messages of a key until the commit is acknowledged anyway.
        """
        if self.ordered or self._stopping or self._puller is None:
            return
        self._pulled_ahead = self._puller.submit(self._pull)

    def _take_pulled_ahead(self) -> list[ReceivedMessage]:
        """Return the batch pulled during the last commit, or pull one now."""
        pulled, self._pulled_ahead = self._pulled_ahead, None
        if pulled is None:
            return self._pull()
        return pulled.result()

    def _return_pulled_ahead(self) -> None:
        """Hand a batch pulled ahead back to Pub/Sub, unprocessed."""
        pulled, self._pulled_ahead = self._pulled_ahead, None
        if pulled is None:
            return
        try:
            messages = pulled.result()
        except SourceError as error:
            log.warning("pull failed", error=str(error))
            return
        self._settle([message.ack_id for message in messages], nack=True)

    def _pull(self) -> list[ReceivedMessage]:
        """Pull one batch: several pulls, or a single one on an ordered subscription."""
        messages: list[ReceivedMessage] = []
        deadline = time.monotonic() + self.options.commit_interval
        timeout = self.options.pull_timeout
        while not self._stopping:
            wanted = min(_MAX_PULL, self.options.batch_size - len(messages))
            try:
                pulled = self.source.pull(wanted, timeout=timeout)
            except TransientSourceError as error:
                log.warning("pull failed", error=str(error))
                time.sleep(_BACKOFF_MAX)
                break
            messages += pulled
            full = len(messages) >= self.options.batch_size
            if not pulled or full or self.ordered or time.monotonic() > deadline:
                break
            # More may be waiting; a short pull finds out without stalling.
            timeout = 0.1
        return messages

    def _sort_messages(self, messages: list[ReceivedMessage], cycle: _Cycle) -> None:
        """Decode messages into the reorder buffer, or set them aside."""
        observe = self.observability
        for message in messages:
            try:
                event = self.source.decode(message)
            except EventRejected as rejection:
                cycle.dead_letters.append((message, rejection))
                if observe is not None:
                    observe.record_event("rejected", rejection.reason)
                continue
            if event.ts > time.time() + self.options.max_future:
                # Checked before the reorder buffer and the engine, whose
                # clocks one far-future event would move for good.
                future = EventRejected(
                    "time_in_future",
                    f"The event time {event.time} is more than "
                    f"{self.options.max_future:g}s ahead of this worker's clock.",
                )
                cycle.dead_letters.append((message, future))
                if observe is not None:
                    observe.record_event("rejected", future.reason)
                continue
            cycle.ack.append(message.ack_id)
            outcome = self.buffer.add(event)
            if outcome == "late":
                self.late_events += 1
                log.debug("event arrived late", event_id=event.id, time=event.time)
            elif outcome == "duplicate" and observe is not None:
                observe.record_event("duplicate")

    def _process(self, events: list[Event]) -> _Progress:
        """Run released events through the engine, collecting what to commit."""
        engine = self.engine
        assert engine is not None
        progress = _Progress()
        observe = self.observability
        for event in events:
            duplicates = engine.stats.duplicates
            engine.process(event)
            duplicate = engine.stats.duplicates > duplicates
            if observe is not None:
                observe.record_event("duplicate" if duplicate else "accepted")
            if duplicate:
                continue
            progress.processed += 1
            if event.type == "metrics.sampled":
                values = {
                    name: value
                    for name, value in event.data.items()
                    if isinstance(value, int | float) and not isinstance(value, bool)
                }
                progress.metrics.setdefault(minute_key(event.ts), {}).update(values)
        progress.records = engine.take_actions()
        for record in progress.records:
            if record.outcome == "failed":
                self.retries.add(record, time.time())
        return progress

    def _retry_actions(self, due: list[str], progress: _Progress) -> None:
        """Run failed actions again; dead-letter those out of attempts."""
        engine = self.engine
        assert engine is not None
        for action_id in due:
            record, attempts, exhausted = self.retries.attempt(
                action_id, engine, time.time()
            )
            progress.updated.append((record, attempts))
            if exhausted:
                self._dead_letter_action(record, attempts)

    # Durability

    def _commit(self, progress: _Progress, cycle: _Cycle) -> CommitReport:
        """Commit the cycle, retrying with back-off while Firestore is away.

        Raises:
            LeaseLostError: another worker took over.
            StateError: Firestore refused the commit, or a stopping worker
                could not commit within its grace period.
        """
        engine, lease = self.engine, self._lease
        assert engine is not None and lease is not None
        self.processed_total += progress.processed
        dirty = engine.handler_state.dirty
        commit = StateCommit(
            state={
                "engine": engine.snapshot(),
                "worker": {
                    "processed": self.processed_total,
                    "buffer": self.buffer.snapshot(),
                    "retries": self.retries.snapshot(),
                },
            },
            rules_version=self.ruleset.version,
            events_processed=self.processed_total,
            actions=progress.records,
            updated_actions=progress.updated,
            handler_state={
                (space, key): engine.handler_state.get(space, key)
                for space, key in dirty
            },
            metric_samples=progress.metrics,
        )
        held = cycle.ack + cycle.nack
        delay, extended_at = _BACKOFF_FIRST, float("-inf")
        give_up_at: float | None = None
        while True:
            try:
                self._lease, report = self.store.commit(lease, commit)
            except TransientStateError as error:
                now = time.monotonic()
                if self._stopping and give_up_at is None:
                    give_up_at = now + _STOP_GRACE
                if give_up_at is not None and now > give_up_at:
                    raise StateError(
                        f"The worker is stopping and could not commit its last "
                        f"batch within {_STOP_GRACE:.0f} seconds: {error}"
                    ) from error
                log.warning("commit failed", error=str(error), retry_in=delay)
                if now - extended_at > _EXTEND_EVERY:
                    self._extend(held)
                    extended_at = now
                time.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)
                lease = self._lease or lease
                continue
            dirty.clear()
            self._renewed_at = time.monotonic()
            return report

    def _extend(self, ack_ids: list[str]) -> None:
        try:
            self.source.extend(ack_ids, _EXTEND_SECONDS)
        except SourceError as error:
            log.warning("ack deadline extension failed", error=str(error))

    def _settle(self, ack_ids: list[str], nack: bool = False) -> None:
        """Acknowledge (or return) messages; a failure only means redelivery."""
        if not ack_ids:
            return
        try:
            if nack:
                self.source.nack(ack_ids)
            else:
                self.source.ack(ack_ids)
        except SourceError as error:
            log.warning("acknowledge failed", messages=len(ack_ids), error=str(error))

    def _write_actions(self, records: list[ActionRecord]) -> None:
        if self._actions_out is None or not records:
            return
        self._actions_out.write(b"".join(encode_record(r) for r in records))
        self._actions_out.flush()

    # Dead letters

    def _publish_dead_letters(self, cycle: _Cycle) -> None:
        """Publish rejected messages; acknowledge only those that went out.

        They are published before the commit and acknowledged after it, so
        a crash in between publishes one again rather than losing it; the
        `original_message_id` attribute tells the copies apart.
        """
        if not cycle.dead_letters:
            return
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
            for message, rejection in cycle.dead_letters
        ]
        ack_ids = [message.ack_id for message, _ in cycle.dead_letters]
        for message, rejection in cycle.dead_letters:
            log.warning(
                "message rejected",
                message_id=message.message_id,
                reason=rejection.reason,
                error=str(rejection),
            )
        if not self._send_dead_letters(batch):
            cycle.nack += ack_ids
            return
        cycle.ack += ack_ids

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


def subscription_is_ordered(project: str, subscription: str) -> bool:
    """Tell whether a subscription delivers messages in ordering-key order.

    Raises:
        SourceError: Pub/Sub refused the request.
    """
    from google.api_core import exceptions as api_exceptions
    from google.cloud.pubsub_v1 import SubscriberClient

    path = subscription
    if not subscription.startswith("projects/"):
        path = f"projects/{project}/subscriptions/{subscription}"
    client = SubscriberClient()
    try:
        found = client.get_subscription(subscription=path, timeout=30)
    except api_exceptions.GoogleAPIError as error:
        raise SourceError(
            f"Pub/Sub could not describe the subscription {path}: {error}."
        ) from error
    finally:
        client.close()
    return bool(found.enable_message_ordering)

"""Metrics and status of a running engine, for Prometheus and for people.

`Observability` is written to by the engine thread and read by the status
server's threads. Prometheus metrics live in a registry of their own, so
that two engines in one process (tests, benchmarks) never share counters.
Everything the status page shows besides the metrics (recent actions,
rates, the tier, the rules and the last reload) is kept in memory under a
lock, bounded in size whatever the traffic.

Events are counted as `replay` counts them: every event received is either
accepted or rejected with a reason, and a duplicate is an accepted event
whose id was already seen, so it is counted both as accepted and as a
duplicate.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client import (
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import Counter as MetricCounter

from engine.actions import ActionRecord
from engine.events import format_time
from engine.loader import LoadedRule, RuleSet

if TYPE_CHECKING:
    from engine.engine import Engine

__all__ = ["EventOutcome", "Observability", "RateRing", "rule_kind"]

EventOutcome = Literal["accepted", "rejected", "duplicate"]

# Enough recent actions to see what just happened, few enough that the
# status page stays small: a record with its explanation is about 1 KiB.
ACTIONS_KEPT = 200
# The rate charts cover the last ten minutes, one point per second.
RATE_SECONDS = 600
# A loop that has not reported for this long is stuck: a pull waits at most
# a few seconds, and even an idle worker reports after every empty pull.
LIVENESS_TIMEOUT = 60.0
# Handlers answer in milliseconds when healthy and time out after seconds.
_ACTION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_BATCH_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def rule_kind(loaded: LoadedRule) -> str:
    """Return the kind of a rule: event, threshold, classify or correlate."""
    spec = loaded.spec
    if spec.correlate is not None:
        return "correlate"
    if spec.classify is not None:
        return "classify"
    if spec.threshold is not None:
        return "threshold"
    return "event"


class RateRing:
    """Count things per wall-clock second over a fixed span of recent seconds.

    Each slot remembers which second it counts, so a slot left over from an
    earlier lap of the ring reads as zero instead of as a stale count.
    """

    def __init__(self, seconds: int) -> None:
        self._counts = [0] * seconds
        self._seconds = [-1] * seconds

    def add(self, now: float, count: int = 1) -> None:
        """Add `count` to the second that holds `now`."""
        second = int(now)
        slot = second % len(self._counts)
        if self._seconds[slot] != second:
            self._seconds[slot] = second
            self._counts[slot] = 0
        self._counts[slot] += count

    def series(self, now: float) -> list[int]:
        """Return the counts of the whole seconds before `now`, oldest first."""
        # The current second is still filling up; showing it would make
        # every chart end in a drop.
        size = len(self._counts)
        last = int(now) - 1
        counts = []
        for second in range(last - size + 1, last + 1):
            slot = second % size
            counts.append(self._counts[slot] if self._seconds[slot] == second else 0)
        return counts


class Observability:
    """Hold an engine's Prometheus metrics and the state of its status page.

    Args:
        clock: Returns wall-clock seconds; tests pass a fake one.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.registry = CollectorRegistry()
        self._declare_metrics()
        self._lock = threading.Lock()
        self._actions: deque[dict[str, Any]] = deque(maxlen=ACTIONS_KEPT)
        self._event_rate = RateRing(RATE_SECONDS)
        self._action_rate = RateRing(RATE_SECONDS)
        self._totals: Counter[str] = Counter()
        self._backlog: int | None = None
        self._tier: str | None = None
        self._tiers: dict[str, dict[str, Any]] = {}
        self._rules: list[dict[str, Any]] = []
        self._version: str | None = None
        self._rules_loaded_at: float | None = None
        self._reload: dict[str, Any] | None = None
        self._ready = False
        self._ready_reason = "The engine is starting."
        # Backends whose requests fail now, with the sentence that says so.
        self._failing: dict[str, str] = {}
        self._heartbeat = clock()
        # The fire counts already turned into metrics, per engine: a new
        # engine (a restart of the loop) starts its counts from zero.
        self._fires_source: dict[str, int] | None = None
        self._fires_seen: Counter[str] = Counter()

    def _declare_metrics(self) -> None:
        registry = self.registry
        self.events_received = MetricCounter(
            "rules_engine_events_received",
            "Events received, valid or not.",
            registry=registry,
        )
        self.events_accepted = MetricCounter(
            "rules_engine_events_accepted",
            "Events accepted as valid, duplicates included.",
            registry=registry,
        )
        self.events_rejected = MetricCounter(
            "rules_engine_events_rejected",
            "Events rejected as invalid, by reason.",
            ["reason"],
            registry=registry,
        )
        self.duplicates = MetricCounter(
            "rules_engine_duplicates",
            "Accepted events dropped because their id was already seen.",
            registry=registry,
        )
        self.rule_fires = MetricCounter(
            "rules_engine_rule_fires",
            "Times each rule fired.",
            ["rule"],
            registry=registry,
        )
        self.actions = MetricCounter(
            "rules_engine_actions",
            "Actions decided, by handler and outcome (ok, failed, shadow).",
            ["handler", "outcome"],
            registry=registry,
        )
        self.action_latency = Histogram(
            "rules_engine_action_latency_seconds",
            "Time a handler took to carry out one action.",
            ["handler"],
            buckets=_ACTION_BUCKETS,
            registry=registry,
        )
        self.batch_latency = Histogram(
            "rules_engine_batch_latency_seconds",
            "Time from pulling a batch of messages to acknowledging it.",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.backlog = Gauge(
            "rules_engine_subscription_backlog_messages",
            "Messages the worker's last pull returned; a full batch means more "
            "are waiting.",
            registry=registry,
        )
        self.rules_version = Gauge(
            "rules_engine_rules_version_info",
            "The version of the rules running; the value is always 1.",
            ["version"],
            registry=registry,
        )
        self.rules_stale = Gauge(
            "rules_engine_rules_stale",
            "1 when the rule files on disk failed to load and older rules run.",
            registry=registry,
        )
        self.rule_reloads = MetricCounter(
            "rules_engine_rule_reloads",
            "Reloads of the rule files, by outcome (ok, failed).",
            ["outcome"],
            registry=registry,
        )
        self.backend_up = Gauge(
            "rules_engine_backend_up",
            "1 while a backend (firestore) takes the engine's requests, 0 while "
            "they fail.",
            ["backend"],
            registry=registry,
        )
        self.tier_info = Gauge(
            "rules_engine_tier_info",
            "The platform's current tier; the value is always 1.",
            ["tier"],
            registry=registry,
        )

    # Written by the engine thread

    def record_event(self, outcome: EventOutcome, reason: str | None = None) -> None:
        """Count one event received: accepted, rejected or a duplicate.

        `reason` is the rejection's short code, as dead letters carry it.
        """
        self.events_received.inc()
        if outcome == "rejected":
            self.events_rejected.labels(reason=reason or "unknown").inc()
        else:
            self.events_accepted.inc()
        if outcome == "duplicate":
            self.duplicates.inc()
        with self._lock:
            self._totals["received"] += 1
            self._totals[outcome] += 1
            self._event_rate.add(self.clock())

    def record_action(self, record: ActionRecord, seconds: float | None = None) -> None:
        """Count one action and keep it, with its explanation, for the page.

        `seconds` is how long the handler took, by default what the engine
        measured; None (a shadow action, a template that failed to render)
        leaves the latency histogram alone.
        """
        if seconds is None:
            seconds = record.seconds
        self.actions.labels(handler=record.action, outcome=record.outcome).inc()
        if seconds is not None:
            self.action_latency.labels(handler=record.action).observe(seconds)
        entry = record.to_mapping()
        entry["seconds"] = seconds
        now = self.clock()
        with self._lock:
            self._actions.append(entry)
            self._totals["actions"] += 1
            self._action_rate.add(now)

    def record_batch(self, engine: Engine, seconds: float) -> None:
        """Record one batch: its latency, then the engine's fires and tier.

        Call it on the engine thread, after the batch, since it reads the
        engine.
        """
        self.batch_latency.observe(seconds)
        fires = engine.stats.fires
        if fires is not self._fires_source:
            self._fires_source, self._fires_seen = fires, Counter()
        for rule, count in fires.items():
            new = count - self._fires_seen[rule]
            if new > 0:
                self.rule_fires.labels(rule=rule).inc(new)
        self._fires_seen = Counter(fires)
        self.set_tier(engine.tier)
        self.heartbeat()

    def heartbeat(self) -> None:
        """Tell that the processing loop is alive; call it once per loop."""
        now = self.clock()
        with self._lock:
            self._heartbeat = now

    def set_backlog(self, messages: int) -> None:
        """Set the backlog the worker last saw: the messages of its last pull.

        Pulls do not tell how many messages remain, so a full batch only
        says that more are waiting. The true backlog is Pub/Sub's
        `num_undelivered_messages` in Cloud Monitoring, which KEDA reads.
        """
        self.backlog.set(messages)
        with self._lock:
            self._backlog = messages

    def set_tier(self, tier: str | None) -> None:
        """Set the platform's current tier."""
        with self._lock:
            if tier == self._tier:
                return
            self._tier = tier
        self.tier_info.clear()
        if tier is not None:
            self.tier_info.labels(tier=tier).set(1)

    def set_rules(self, ruleset: RuleSet) -> None:
        """Show the rules now running, their version and their tiers."""
        rules = [
            {
                "name": loaded.spec.name,
                "kind": rule_kind(loaded),
                "mode": loaded.spec.mode,
                "priority": loaded.spec.priority,
                "file": loaded.file,
                "line": loaded.line,
            }
            for loaded in ruleset.rules
        ]
        tiers = {name: config.model_dump() for name, config in ruleset.tiers.items()}
        with self._lock:
            self._rules, self._tiers = rules, tiers
            self._version = ruleset.version
            self._rules_loaded_at = self.clock()
        self.rules_version.clear()
        self.rules_version.labels(version=ruleset.version).set(1)

    def mark_reload(self, ok: bool, problems: Sequence[str] = ()) -> None:
        """Record the outcome of a reload; a failed one marks the rules stale.

        Args:
            ok: The rule files loaded and now run.
            problems: One line per problem, as `rules-engine validate` prints.
        """
        self.rule_reloads.labels(outcome="ok" if ok else "failed").inc()
        self.rules_stale.set(0 if ok else 1)
        with self._lock:
            self._reload = {"ok": ok, "at": self.clock(), "problems": list(problems)}

    def set_ready(self, ready: bool, reason: str = "") -> None:
        """Say whether the engine is ready: rules loaded, backends answered.

        Args:
            ready: True once the engine can take events.
            reason: A sentence that tells why it is not ready.
        """
        with self._lock:
            self._ready, self._ready_reason = ready, reason

    def set_backend(self, backend: str, ok: bool, reason: str = "") -> None:
        """Say whether a backend takes requests; one that fails makes it unready.

        Args:
            backend: The backend's name, e.g. `firestore`.
            ok: True once a request succeeded, False when one failed.
            reason: A sentence that tells what fails, shown by /readyz.
        """
        self.backend_up.labels(backend=backend).set(1 if ok else 0)
        with self._lock:
            if ok:
                self._failing.pop(backend, None)
            else:
                self._failing[backend] = reason

    # Read by the status server

    def metrics_text(self) -> bytes:
        """Return every metric in the Prometheus text format."""
        return generate_latest(self.registry)

    def health(self) -> dict[str, Any]:
        """Return liveness: whether the loop reported lately, and staleness."""
        now = self.clock()
        with self._lock:
            silent = now - self._heartbeat
            stale = self._reload is not None and not self._reload["ok"]
        return {
            "alive": silent <= LIVENESS_TIMEOUT,
            "seconds_since_heartbeat": round(silent, 3),
            "rules_stale": stale,
        }

    def readiness(self) -> dict[str, Any]:
        """Return whether the engine is ready and, if not, why.

        Ready means started and with no backend failing; the reason names
        what is missing, the start first, then the first failing backend.
        """
        with self._lock:
            if self._ready and self._failing:
                return {"ready": False, "reason": next(iter(self._failing.values()))}
            return {"ready": self._ready, "reason": self._ready_reason}

    def status(self) -> dict[str, Any]:
        """Return everything the status page shows, as JSON-compatible data."""
        now = self.clock()
        health, readiness = self.health(), self.readiness()
        with self._lock:
            reload = dict(self._reload) if self._reload is not None else None
            if reload is not None:
                reload["at"] = format_time(reload["at"])
            loaded_at = self._rules_loaded_at
            return {
                "now": format_time(now),
                "health": health,
                "readiness": readiness,
                "tier": {
                    "name": self._tier,
                    "config": self._tiers.get(self._tier or ""),
                },
                "rules": {
                    "version": self._version,
                    "loaded_at": format_time(loaded_at) if loaded_at else None,
                    "rules": list(self._rules),
                },
                "reload": reload,
                "counts": {
                    "received": self._totals["received"],
                    "accepted": self._totals["accepted"] + self._totals["duplicate"],
                    "rejected": self._totals["rejected"],
                    "duplicates": self._totals["duplicate"],
                    "actions": self._totals["actions"],
                    "backlog": self._backlog,
                },
                "rates": {
                    "seconds": RATE_SECONDS,
                    "events": self._event_rate.series(now),
                    "actions": self._action_rate.series(now),
                },
                # Newest first, as people read a log of recent happenings.
                "actions": list(reversed(self._actions)),
            }

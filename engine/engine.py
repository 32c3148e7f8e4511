"""The engine: route each event through the rules and carry out the actions.

One `Engine` owns one durable-rules matcher and must stay on one thread.
It runs on event time: the clock is the latest event time seen, and timers
(`for` durations, cooldown ends, trailing coalesced actions) fire when the
clock passes them, before the event that moved it. The same events in the
same order therefore give the same actions, whatever the wall clock says.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import structlog
from pydantic import BaseModel, ValidationError

from engine.actions import ActionRecord, Explanation, action_id, run_handler
from engine.compiler import compile_rules
from engine.conditions import encode_value
from engine.durations import format_duration
from engine.errors import EventRejected
from engine.events import Event, format_time
from engine.loader import RuleSet
from engine.matcher import Matcher
from engine.rule_model import TierConfig
from engine.rule_runtime import (
    AggregateRuntime,
    RuleRuntime,
    WindowGroup,
    aggregate_signature,
    build_runtime,
)
from engine.templates import TemplateError, find_placeholders, render
from handlers.registry import HandlerRegistry

__all__ = ["Engine", "EngineStats", "Tally"]

log = structlog.get_logger(__name__)

_K = TypeVar("_K")

# How often, in event time, idle keys, expired cooldowns and coalescing
# entries are swept away; sweeping is linear in the number of keys.
_SWEEP_INTERVAL = 300.0


class Tally(dict[_K, int]):
    """Counts by key; a key never counted reads as 0.

    Not a `collections.Counter`: Counter defines `__delitem__` in Python,
    which sends every item assignment, and so every `+= 1`, through a slow
    generic slot (about 800 machine instructions each); counts are bumped
    several times per event.
    """

    def __missing__(self, key: _K) -> int:
        return 0


@dataclass
class EngineStats:
    """Counters of one engine's work."""

    processed: int = 0
    duplicates: int = 0
    emitted: int = 0
    fires: Tally[str] = field(default_factory=Tally)
    actions: Tally[tuple[str, str]] = field(default_factory=Tally)
    coalesced: Tally[str] = field(default_factory=Tally)
    suppressed: Tally[str] = field(default_factory=Tally)
    late: Tally[str] = field(default_factory=Tally)
    skipped: Tally[str] = field(default_factory=Tally)

    def count_suppressed(self, rule: str) -> None:
        """Count a firing held back by a cooldown."""
        self.suppressed[rule] += 1

    def count_late(self, rule: str) -> None:
        """Count an event too old for a rule's window."""
        self.late[rule] += 1

    def count_skipped(self, rule: str) -> None:
        """Count an event that lacked the value a rule aggregates."""
        self.skipped[rule] += 1


@dataclass(frozen=True, slots=True)
class _ActionPlan:
    """One action of a rule, prepared once: static params skip rendering."""

    position: int
    action: str
    params: dict[str, Any]
    interval: float
    static: bool
    # The coalescing key of a static action; unused ("", "") otherwise.
    key: tuple[str, str]


class _EngineContext:
    """The `HandlerContext` handlers see."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @property
    def tier(self) -> str | None:
        return self._engine.tier

    @property
    def tiers(self) -> dict[str, TierConfig]:
        return self._engine.ruleset.tiers

    @property
    def state(self) -> _HandlerState:
        return self._engine.handler_state

    def emit(self, event_type: str, data: dict[str, Any], at: float) -> None:
        self._engine.emit(event_type, data, at)


class _HandlerState:
    """Namespaced key/value state, saved with the engine's snapshot."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, Any]] = {}
        self.dirty: set[tuple[str, str]] = set()

    def get(self, namespace: str, key: str) -> Any:
        return self.values.get(namespace, {}).get(key)

    def set(self, namespace: str, key: str, value: Any) -> None:
        self.values.setdefault(namespace, {})[key] = value
        self.dirty.add((namespace, key))

    def keys(self, namespace: str) -> list[str]:
        return sorted(self.values.get(namespace, {}))


class Engine:
    """Evaluate rules over events in event time and execute their actions."""

    def __init__(
        self,
        ruleset: RuleSet,
        registry: HandlerRegistry | None = None,
        on_action: Callable[[ActionRecord], None] | None = None,
        dedup: bool = True,
        max_clock_jump: float | None = None,
    ) -> None:
        self.ruleset = ruleset
        self.registry = registry or HandlerRegistry()
        self.on_action = on_action
        self.dedup = dedup
        self.stats = EngineStats()
        self.clock = float("-inf")
        self.tier: str | None = ruleset.settings.initial_tier
        self.handler_state = _HandlerState()
        self.context = _EngineContext(self)
        self.actions: list[ActionRecord] = []
        self._timers: list[tuple[float, int, str, Any]] = []
        self._timer_seq = itertools.count()
        self._emitted: deque[Event] = deque()
        self._emit_seq = itertools.count()
        self._coalesce: dict[tuple[str, str], dict[str, Any]] = {}
        self._seen_ids: dict[str, float] = {}
        self._seen_order: deque[str] = deque()
        self._last_sweep = float("-inf")
        self._current_action: str | None = None
        # Kept across reloads. None takes the rules' setting; the worker
        # passes infinity, as it bounds live traffic by its wall clock.
        self.max_clock_jump = (
            ruleset.settings.max_clock_jump
            if max_clock_jump is None
            else max_clock_jump
        )
        self._build(ruleset)

    def _build(self, ruleset: RuleSet) -> None:
        compiled = compile_rules(ruleset)
        self._dedup_retention = ruleset.settings.dedup_retention
        self._dedup_slack = self._dedup_retention / 100
        self._action_plan_cache: dict[str, list[_ActionPlan]] = {}
        # Static params, checked once: id of the rule's own params mapping ->
        # (that mapping, its validated model). The mapping is kept, so the id
        # cannot be reused while the entry lives.
        self._static_params: dict[int, tuple[dict[str, Any], BaseModel]] = {}
        self.matcher = Matcher(compiled.definition)
        self.runtimes: dict[str, RuleRuntime] = {
            loaded.spec.name: build_runtime(loaded, ruleset.version)
            for loaded in ruleset.rules
        }
        groups: dict[str, WindowGroup] = {}
        for runtime in self.runtimes.values():
            if isinstance(runtime, AggregateRuntime):
                signature = aggregate_signature(runtime.spec)
                runtime.windows = groups.setdefault(signature, runtime.windows)
        # Per event type: fact paths, and durable name -> (runtime, role).
        self._routes: dict[
            str, tuple[list[tuple[str, str]], dict[str, tuple[RuleRuntime, str]]]
        ] = {}
        for event_type, route in compiled.routes.items():
            targets = {}
            for durable_name in route.names:
                rule_name, _, role = durable_name.partition("#")
                targets[durable_name] = (self.runtimes[rule_name], role or "event")
            self._routes[event_type] = (route.paths, targets)
        self._plans: dict[Any, list[tuple[RuleRuntime, str]]] = {}

    # Event intake

    def process(self, event: Event) -> list[ActionRecord]:
        """Process one accepted event; return the actions it caused.

        Raises:
            EventRejected: the event is too far ahead of the clock (`time_jump`).
        """
        # The hot path of the engine: the duplicate check and the routing
        # are written inline, since a call costs as much as their work.
        actions = self.actions
        start = len(actions)
        ts = event.ts
        dedup = self.dedup
        if dedup and event.id in self._seen_ids:
            self.stats.duplicates += 1
            return []
        if ts > self.clock:
            # Refused before its id is remembered, and before its time can
            # move the horizon past which remembered ids are forgotten.
            if ts - self.clock > self.max_clock_jump and self.clock > float("-inf"):
                raise EventRejected(
                    "time_jump",
                    f"The event time {event.time} is more than "
                    f"{format_duration(self.max_clock_jump)} ahead of the "
                    "engine's clock "
                    f"({format_time(self.clock)}); one such event would make "
                    "every later one late.",
                )
            timers = self._timers
            if (timers and timers[0][0] <= ts) or (
                ts - self._last_sweep >= _SWEEP_INTERVAL
            ):
                self.advance_to(ts)
            else:
                # Nothing due and no sweep: moving the clock is all there is.
                self.clock = ts
        if dedup:
            seen, order = self._seen_ids, self._seen_order
            seen[event.id] = ts
            order.append(event.id)
            horizon = self.clock - self._dedup_retention
            # Forgotten in steps of a hundredth of the retention, not one id
            # per event: an id may be kept that much longer, never shorter.
            if seen[order[0]] < horizon - self._dedup_slack:
                self._forget_seen(horizon)

        route = self._routes.get(event.type)
        if route is not None:
            paths, targets = route
            key: Any = self._fact_key(event, paths) if paths else event.type
            plan = self._plans.get(key)
            if plan is None:
                plan = self._plan(event, key, paths, targets)
            for runtime, role in plan:
                runtime.on_event(self, event, role)

        if self._emitted:
            while self._emitted:
                self._dispatch(self._emitted.popleft())
        self.stats.processed += 1
        return actions[start:] if len(actions) > start else []

    def process_past_jump(self, event: Event) -> list[ActionRecord]:
        """Process an event however far ahead of the clock it is.

        For a caller that has seen the events after a `time_jump` agree
        with it: then the clock, not the event, was the outlier.
        """
        bound, self.max_clock_jump = self.max_clock_jump, float("inf")
        try:
            return self.process(event)
        finally:
            self.max_clock_jump = bound

    def _forget_seen(self, horizon: float) -> None:
        # `order` holds ids in arrival order; an id leaves once its time is
        # past the horizon. A late event may sit behind newer ones and leave
        # a little late, which only keeps it longer, never shorter.
        seen, order = self._seen_ids, self._seen_order
        while order and seen[order[0]] < horizon:
            del seen[order.popleft()]

    @staticmethod
    def _fact_key(event: Event, paths: list[tuple[str, str]]) -> Any:
        values = (encode_value(event.read(path)) for path, _ in paths)
        return (event.type, *(_hashable(v) for v in values))

    def _plan(
        self,
        event: Event,
        key: Any,
        paths: list[tuple[str, str]],
        targets: dict[str, tuple[RuleRuntime, str]],
    ) -> list[tuple[RuleRuntime, str]]:
        """Ask durable-rules which rules an event's fact matches, and order them."""
        fact: dict[str, Any] = {"k": "e", "t": event.type}
        for path, fact_key in paths:
            value = encode_value(event.read(path))
            if value is not None:
                fact[fact_key] = value
        names = self.matcher.match(key, fact)
        plan = [targets[name] for name in names if name in targets]
        # Several rules matching one event all fire, highest priority first;
        # within a correlation, `then` is checked before `first` so that one
        # event cannot pair with itself.
        plan.sort(key=lambda t: (t[0].rank, t[1] != "then"))
        if len(self._plans) > 100_000:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def _dispatch(self, event: Event) -> None:
        """Route an event the engine itself emitted through the rules."""
        route = self._routes.get(event.type)
        if route is None:
            return
        paths, targets = route
        key: Any = self._fact_key(event, paths) if paths else event.type
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plan(event, key, paths, targets)
        for runtime, role in plan:
            runtime.on_event(self, event, role)

    def match_value(self, rule: str, value: float) -> tuple[str, ...]:
        """Ask the matcher which value conditions of `rule` hold."""
        return self.matcher.match(("v", rule, value), {"k": "v", "r": rule, "v": value})

    # Time

    def schedule(self, due: float, runtime: RuleRuntime | str, key: Any) -> None:
        """Call the runtime's `on_timer(key, due)` once the clock reaches `due`."""
        name = runtime if isinstance(runtime, str) else runtime.name
        heapq.heappush(self._timers, (due, next(self._timer_seq), name, key))

    def advance_to(self, ts: float) -> None:
        """Move the clock forward to `ts`, firing every timer due on the way."""
        if ts <= self.clock:
            return
        timers = self._timers
        while timers and timers[0][0] <= ts:
            due, _, name, key = heapq.heappop(timers)
            self.clock = max(self.clock, due)
            if name == "#coalesce":
                self._flush_coalesced(key, due)
            else:
                runtime = self.runtimes.get(name)
                if runtime is not None:
                    runtime.on_timer(self, key, due)
            while self._emitted:
                self._dispatch(self._emitted.popleft())
        self.clock = ts
        if ts - self._last_sweep >= _SWEEP_INTERVAL:
            self._sweep(ts)

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        for runtime in self.runtimes.values():
            runtime.sweep(now)
        for key in [
            k
            for k, v in self._coalesce.items()
            if v["until"] < now and v["pending"] is None
        ]:
            del self._coalesce[key]

    # Firing

    def _action_plans(self, runtime: RuleRuntime) -> list[_ActionPlan]:
        plans = self._action_plan_cache.get(runtime.name)
        if plans is None:
            plans = []
            for position, spec in enumerate(runtime.spec.actions):
                interval = spec.coalesce
                if interval is None:
                    interval = self.registry.handler_class(spec.action).default_coalesce
                static = not find_placeholders(spec.params)
                key = ("", "")
                if static:
                    self._check_static(spec.action, spec.params)
                    encoded = orjson.dumps(spec.params, option=orjson.OPT_SORT_KEYS)
                    key = (spec.action, encoded.decode())
                plans.append(
                    _ActionPlan(
                        position, spec.action, spec.params, interval or 0.0, static, key
                    )
                )
            self._action_plan_cache[runtime.name] = plans
        return plans

    def _check_static(self, action: str, params: dict[str, Any]) -> None:
        """Validate static params once; `_execute` then reuses the model."""
        model = self.registry.handler_class(action).Params
        # Invalid ones are checked again, and reported, when the action runs.
        with contextlib.suppress(ValidationError):
            self._static_params[id(params)] = (params, model.model_validate(params))

    def fire(
        self,
        runtime: RuleRuntime,
        trigger: dict[str, str],
        at: float,
        context: dict[str, Any],
        why: Explanation,
        event_mapping: dict[str, Any] | None,
    ) -> None:
        """Carry out every action of a rule that fired."""
        self.stats.fires[runtime.name] += 1
        values: dict[str, Any] | None = None
        for plan in self._action_plans(runtime):
            # A static action inside its coalescing interval costs one lookup.
            if plan.static and plan.interval:
                entry = self._coalesce.get(plan.key)
                if entry is not None and at < entry["until"]:
                    self._hold(entry, plan.key, runtime, plan, trigger, at, why)
                    continue
            record = ActionRecord(
                id=action_id(
                    runtime.name, plan.position, trigger.get("event_id", ""), at
                ),
                at=at,
                rule=runtime.name,
                action=plan.action,
                params={},
                trigger_id=trigger.get("event_id", ""),
                trigger_type=trigger.get("type", ""),
                why=why,
            )
            if plan.static:
                record.params = plan.params
                key = plan.key
            else:
                if values is None:
                    values = {
                        "rule": runtime.name,
                        "tier": self.tier,
                        "event": event_mapping or {},
                        "data": (event_mapping or {}).get("data", {}),
                        **context,
                    }
                try:
                    record.params = render(plan.params, values)
                except TemplateError as error:
                    record.outcome, record.error = "failed", str(error)
                    self._finish(record)
                    continue
                key = None
            if plan.interval:
                if key is None:
                    encoded = orjson.dumps(record.params, option=orjson.OPT_SORT_KEYS)
                    key = (record.action, encoded.decode())
                entry = self._coalesce.get(key)
                if entry is not None and at < entry["until"]:
                    self._hold(
                        entry, key, runtime, plan, trigger, at, why, record.params
                    )
                    continue
                self._coalesce[key] = {
                    "until": at + plan.interval,
                    "interval": plan.interval,
                    "pending": None,
                }
            self._execute(record, runtime)

    def fire_event(self, runtime: RuleRuntime, view: Event) -> None:
        """Fire an event rule; a burst of held static actions costs little.

        When every action of the rule is static and inside its coalescing
        interval, nothing is rendered or explained now: the held entry keeps
        the event and the explanation is built if and when it runs.
        """
        at = view.ts
        # The cache read inline: the call would cost as much as the lookup.
        plans = self._action_plan_cache.get(runtime.name) or self._action_plans(runtime)
        coalesce = self._coalesce
        if len(plans) == 1:
            # The common case, one action: no lists, no second loop.
            plan = plans[0]
            entry = coalesce.get(plan.key) if plan.static and plan.interval else None
            if entry is not None and at < entry["until"]:
                self.stats.fires[runtime.name] += 1
                self._hold(entry, plan.key, runtime, plan, view, at, None)
                return
            why = Explanation(runtime.description, None, [view.id], runtime.version)
            self.fire(runtime, view.summary(), at, {"key": None}, why, view.mapping())
            return
        entries = []
        for plan in plans:
            entry = coalesce.get(plan.key) if plan.static and plan.interval else None
            if entry is None or at >= entry["until"]:
                why = Explanation(runtime.description, None, [view.id], runtime.version)
                self.fire(
                    runtime, view.summary(), at, {"key": None}, why, view.mapping()
                )
                return
            entries.append(entry)
        self.stats.fires[runtime.name] += 1
        for plan, entry in zip(plans, entries, strict=True):
            self._hold(entry, plan.key, runtime, plan, view, at, None)

    def _materialize(self, pending: tuple[Any, ...]) -> tuple[Any, ...]:
        """Turn a held entry that kept its event into plain data."""
        rule, position, action, params, trigger, why = pending
        if isinstance(trigger, Event):
            runtime = self.runtimes.get(rule)
            description = runtime.description if runtime is not None else ""
            why = Explanation(description, None, [trigger.id], self.ruleset.version)
            trigger = trigger.summary()
        return (rule, position, action, params, trigger, why)

    def _hold(
        self,
        entry: dict[str, Any],
        key: tuple[str, str],
        runtime: RuleRuntime,
        plan: _ActionPlan,
        trigger: dict[str, str] | Event,
        at: float,
        why: Explanation | None,
        params: dict[str, Any] | None = None,
    ) -> None:
        """Hold back an action repeated within its interval; keep the last one.

        A trigger given as the event itself, with no explanation, is turned
        into plain data only if the held action runs (`_materialize`).

        The held action runs when the interval ends, so the last change of a
        burst is never left unapplied (a purge that only led a burst would
        leave the cache stale).
        """
        held = entry["pending"]
        if held is None:
            self.schedule(entry["until"], "#coalesce", key)
        else:
            # Only the action replaced is coalesced away: the one held runs
            # when the interval ends, so every action decided either runs
            # or is counted here once.
            self.stats.coalesced[held[0]] += 1
        entry["pending"] = (
            runtime.name,
            plan.position,
            plan.action,
            params if params is not None else plan.params,
            trigger,
            why,
        )

    def _flush_coalesced(self, key: tuple[str, str], due: float) -> None:
        entry = self._coalesce.get(key)
        if entry is None or entry["pending"] is None:
            return
        pending = self._materialize(entry["pending"])
        rule_name, position, action, params, trigger, why = pending
        entry["pending"] = None
        entry["until"] = due + entry["interval"]
        runtime = self.runtimes.get(rule_name)
        if runtime is None:
            return
        trigger_id = trigger.get("event_id", "")
        record = ActionRecord(
            id=action_id(rule_name, position, trigger_id, due),
            at=due,
            rule=rule_name,
            action=action,
            params=params,
            trigger_id=trigger_id,
            trigger_type=trigger.get("type", ""),
            why=why,
        )
        self._execute(record, runtime)

    def _execute(self, record: ActionRecord, runtime: RuleRuntime) -> None:
        if runtime.spec.mode == "shadow":
            record.outcome = "shadow"
            self._finish(record)
            return
        handler = self.registry.get(record.action)
        checked = self._static_params.get(id(record.params))
        params = None
        if checked is not None and checked[0] is record.params:
            params = checked[1]
        self._current_action = record.id
        try:
            run_handler(record, handler, self.context, params)
        finally:
            self._current_action = None
        if record.outcome == "failed":
            log.warning(
                "action failed",
                rule=record.rule,
                action_id=record.id,
                action=record.action,
                error=record.error,
            )
        self._finish(record)

    def _finish(self, record: ActionRecord) -> None:
        self.stats.actions[(record.action, record.outcome)] += 1
        self.actions.append(record)
        if self.on_action is not None:
            self.on_action(record)

    def emit(self, event_type: str, data: dict[str, Any], at: float) -> None:
        """Queue an engine-made event, processed right after the current one."""
        if event_type == "tier.changed":
            self.tier = data.get("to", self.tier)
        origin = self._current_action or f"seq{next(self._emit_seq)}"
        event = Event(
            id=f"{origin}:{event_type}",
            source="rules-engine",
            type=event_type,
            time=format_time(at),
            ts=at,
            data=data,
        )
        self.stats.emitted += 1
        self._emitted.append(event)

    # State

    def snapshot(self) -> dict[str, Any]:
        """Return everything the engine remembers, as JSON-compatible data.

        Restoring it into an engine with the same rules continues exactly
        where this one stands: windows, cooldowns, `for` timers, held
        coalesced actions, partial correlations, the tier and the event ids
        already seen.
        """
        coalesce = []
        for key, entry in self._coalesce.items():
            pending = entry["pending"]
            if pending is not None:
                rule, position, action, params, trigger, why = self._materialize(
                    pending
                )
                pending = [rule, position, action, params, trigger, why.to_mapping()]
            coalesce.append([list(key), {**entry, "pending": pending}])
        return {
            "rules_version": self.ruleset.version,
            "clock": None if self.clock == float("-inf") else self.clock,
            "last_sweep": None
            if self._last_sweep == float("-inf")
            else self._last_sweep,
            "tier": self.tier,
            "runtimes": {name: r.snapshot() for name, r in self.runtimes.items()},
            # What each rule's saved state means, so that a restore under
            # edited rules keeps only what still applies.
            "kinds": {name: _kind_of(r) for name, r in self.runtimes.items()},
            "timers": [
                [due, seq, name, list(key) if isinstance(key, tuple) else key]
                for due, seq, name, key in sorted(self._timers)
            ],
            "coalesce": coalesce,
            "seen": [[self._seen_ids[i], i] for i in self._seen_order],
            "handler_state": self.handler_state.values,
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Continue from a snapshot taken by `snapshot`."""
        self.clock = data["clock"] if data["clock"] is not None else float("-inf")
        self._last_sweep = (
            data["last_sweep"] if data["last_sweep"] is not None else float("-inf")
        )
        self.tier = data["tier"]
        kinds = data.get("kinds", {})
        for name, saved in data["runtimes"].items():
            runtime = self.runtimes.get(name)
            if runtime is not None:
                _restore_compatible(runtime, saved, kinds.get(name, _kind_of(runtime)))
        self._timers = []
        for due, seq, name, key in data["timers"]:
            self._timers.append(
                (due, seq, name, tuple(key) if isinstance(key, list) else key)
            )
        heapq.heapify(self._timers)
        top = max((t[1] for t in self._timers), default=-1)
        self._timer_seq = itertools.count(top + 1)
        self._coalesce = {}
        for key, entry in data["coalesce"]:
            pending = entry["pending"]
            if pending is not None:
                rule, position, action, params, trigger, why = pending
                explanation = Explanation(
                    why["condition"],
                    why.get("value"),
                    why["events"],
                    why["rules_version"],
                )
                pending = (rule, position, action, params, trigger, explanation)
            self._coalesce[tuple(key)] = {**entry, "pending": pending}
        self._seen_order = deque(event_id for _, event_id in data["seen"])
        self._seen_ids = {event_id: ts for ts, event_id in data["seen"]}
        self.handler_state.values = data["handler_state"]

    def reload(self, ruleset: RuleSet) -> None:
        """Switch to new rules between events, keeping what still applies.

        A rule whose name and aggregate are unchanged keeps its windows and
        state; a rule whose aggregate changed keeps its threshold or band
        state (so the tier does not reset) but starts new windows; new rules
        start empty. Timers, held coalesced actions, seen ids and the tier
        are kept. The old durable-rules ruleset is deleted.
        """
        old_runtimes = self.runtimes
        old_matcher = self.matcher
        self.ruleset = ruleset
        self._build(ruleset)
        for name, runtime in self.runtimes.items():
            previous = old_runtimes.get(name)
            if previous is not None:
                _restore_compatible(runtime, previous.snapshot(), _kind_of(previous))
        old_matcher.close()

    def take_actions(self) -> list[ActionRecord]:
        """Return and forget the actions recorded so far."""
        # Emptied in place: callers may hold the list between events.
        taken = list(self.actions)
        self.actions.clear()
        return taken

    def close(self) -> None:
        """Free the matcher and close the handlers."""
        self.matcher.close()


def _kind_of(runtime: RuleRuntime) -> str:
    """Describe what a rule's state is about: its kind and, if any, aggregate."""
    if isinstance(runtime, AggregateRuntime):
        return "aggregate:" + aggregate_signature(runtime.spec)
    return type(runtime).__name__


def _restore_compatible(runtime: RuleRuntime, saved: dict[str, Any], kind: str) -> None:
    """Restore the part of a rule's saved state that its current form can use.

    The same kind and aggregate: everything. An aggregate rule whose
    aggregate changed: its threshold or band state (so the tier does not
    reset) but new windows, and no pending `for` (its timer measured the
    old value). A rule that changed kind: nothing.
    """
    current = _kind_of(runtime)
    if kind == current:
        runtime.restore(saved)
        return
    both_aggregates = kind.startswith("aggregate:") and current.startswith("aggregate:")
    if not both_aggregates:
        return
    saved = {key: value for key, value in saved.items() if key != "windows"}
    saved["states"] = [
        [key, {**state, "pending_since": None, "timer_due": None}]
        for key, state in saved.get("states", [])
    ]
    runtime.restore(saved)


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, bool):
        # True == 1 in Python; keep the cache key distinct.
        return ("bool", value)
    return value

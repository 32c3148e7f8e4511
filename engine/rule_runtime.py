"""The live state of each rule: windows, thresholds, bands and correlations.

Each runtime receives the events its conditions matched and decides when
its rule fires; the engine (`engine.engine.Engine`) carries out the firing.
All times are event times; `now` is the engine's clock.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from engine.actions import Explanation
from engine.durations import format_duration
from engine.loader import LoadedRule
from engine.rule_model import RuleSpec
from engine.windows import SlidingWindow

if TYPE_CHECKING:
    from engine.engine import Engine
    from engine.events import Event

__all__ = [
    "AggregateRuntime",
    "CorrelationRuntime",
    "EventRuntime",
    "RuleRuntime",
    "build_runtime",
]


class RuleRuntime:
    """State shared by every kind of rule: identity, priority, cooldown."""

    def __init__(self, loaded: LoadedRule, version: str) -> None:
        self.loaded = loaded
        self.spec = loaded.spec
        self.name = loaded.spec.name
        self.rank = (-loaded.spec.priority, loaded.order)
        self.version = version
        self.cooldown = loaded.spec.cooldown
        self.last_fire: dict[Any, float] = {}
        self._description: str | None = None

    @property
    def description(self) -> str:
        """Return the rule's condition in words, computed once."""
        if self._description is None:
            self._description = self.describe_condition()
        return self._description

    def in_cooldown(self, key: Any, now: float) -> bool:
        """Tell whether the rule fired for `key` less than a cooldown ago."""
        if self.cooldown is None:
            return False
        last = self.last_fire.get(key)
        return last is not None and now < last + self.cooldown

    def on_event(self, engine: Engine, event: Event, role: str) -> None:
        """Take one event whose condition (for `role`) matched."""
        raise NotImplementedError

    def on_timer(self, engine: Engine, key: Any, due: float) -> None:
        """Handle a timer this rule set, at event time `due`."""

    def sweep(self, now: float) -> None:
        """Drop state that can no longer matter, to bound memory."""
        if self.cooldown is not None:
            horizon = now - self.cooldown
            for key in [k for k, t in self.last_fire.items() if t < horizon]:
                del self.last_fire[key]

    def snapshot(self) -> dict[str, Any]:
        """Return the rule's state as JSON-compatible data."""
        return {"last_fire": [[k, t] for k, t in self.last_fire.items()]}

    def restore(self, data: dict[str, Any]) -> None:
        """Load state saved by `snapshot`."""
        self.last_fire = {k: t for k, t in data.get("last_fire", [])}

    def describe_condition(self) -> str:
        """Return the rule's condition in words."""
        spec = self.spec
        types = " or ".join(spec.event_types())
        text = f"an event of type {types}"
        if spec.when is not None:
            text += f" where {_describe_when(spec.when)}"
        return text


def _describe_when(raw: Any) -> str:
    if isinstance(raw, dict):
        parts = []
        for key, value in raw.items():
            if key in ("all", "any"):
                joiner = " and " if key == "all" else " or "
                parts.append("(" + joiner.join(_describe_when(v) for v in value) + ")")
            elif isinstance(value, dict):
                parts += [f"{key} {op} {operand!r}" for op, operand in value.items()]
            else:
                parts.append(f"{key} == {value!r}")
        return " and ".join(parts)
    return repr(raw)


class EventRuntime(RuleRuntime):
    """A rule that fires on every matching event (subject to its cooldown)."""

    def on_event(self, engine: Engine, event: Event, role: str) -> None:
        """Fire for the event unless the rule is cooling down."""
        if self.cooldown is not None:
            now = event.ts
            if self.in_cooldown(None, now):
                engine.stats.count_suppressed(self.name)
                return
            self.last_fire[None] = now
        engine.fire_event(self, event)


@dataclass(slots=True)
class _KeyState:
    """Threshold or band state of one key of an aggregate rule."""

    fired: bool = False
    pending_since: float | None = None
    candidate: str | None = None
    band: str | None = None
    last_fire: float = -math.inf
    trigger: tuple[str, str] | list[str] | None = None
    timer_due: float | None = None


_KEY_STATE_FIELDS = tuple(f.name for f in fields(_KeyState))


class WindowGroup(dict[Any, SlidingWindow]):
    """Windows by key, shared by rules that aggregate the same thing."""

    def __init__(self) -> None:
        super().__init__()
        self.last_view: Event | None = None
        self.last_added: bool | None = None
        # The aggregate once `last_view` was counted: every rule of the group
        # evaluates it, and the window does not change before the next event.
        self.last_value: float | None = None


def aggregate_signature(spec: RuleSpec) -> str:
    """Return what identifies an aggregate: rules with equal ones share windows."""
    aggregate = spec.aggregate
    assert aggregate is not None
    return json.dumps(
        [spec.event_types(), spec.when, aggregate.model_dump(mode="json")],
        sort_keys=True,
    )


class AggregateRuntime(RuleRuntime):
    """A rule over a windowed aggregate, with a threshold or bands."""

    def __init__(self, loaded: LoadedRule, version: str) -> None:
        super().__init__(loaded, version)
        aggregate = self.spec.aggregate
        assert aggregate is not None
        self.aggregate = aggregate
        self.fields: list[str] = (
            [aggregate.field]
            if isinstance(aggregate.field, str)
            else aggregate.field or []
        )
        self.windows = WindowGroup()
        # durable-rules' verdict per aggregate value, for this rule only.
        self._verdicts: dict[float, tuple[Any, Any]] = {}
        self.states: dict[Any, _KeyState] = {}
        self.threshold = self.spec.threshold
        self.classify = self.spec.classify
        self.fact_name = self.name
        # Read on every event: kept as plain attributes.
        self.by = aggregate.by or None
        self.counts = aggregate.fn == "count"

    def _window(self, key: Any) -> SlidingWindow:
        window = self.windows.get(key)
        if window is None:
            fn = self.aggregate.fn
            window = SlidingWindow(
                "sum" if fn == "balance" and self.aggregate.window else fn,
                self.aggregate.window,
                self.aggregate.resolution,
            )
            self.windows[key] = window
        return window

    def _state(self, key: Any) -> _KeyState:
        state = self.states.get(key)
        if state is None:
            state = _KeyState()
            if self.classify is not None:
                state.band = self.classify.initial
            self.states[key] = state
        return state

    def _event_value(self, event: Event, role: str) -> Any:
        fn = self.aggregate.fn
        if fn == "count":
            return 1
        if fn == "balance":
            return 1 if role == "plus" else -1
        if fn == "distinct":
            value = event.read(self.fields[0])
            # A list or an object is not one value to count; such an event is
            # skipped like one that lacks the field.
            return None if isinstance(value, dict | list) else value
        # A field an event lacks adds nothing to a sum of several fields:
        # such rules read events that carry any one of them.
        total: float = 0
        found = False
        for path in self.fields:
            value = event.read(path)
            if value is None and len(self.fields) > 1:
                continue
            if not isinstance(value, int | float) or isinstance(value, bool):
                return None
            total += value
            found = True
        return total if found else None

    def on_event(self, engine: Engine, event: Event, role: str) -> None:
        """Count the event into its key's window and re-evaluate that key."""
        by = self.by
        key = None
        if by is not None:
            key = event.read(by)
            if isinstance(key, dict | list):
                key = None
        windows = self.windows
        # Rules with the same aggregate share one window group; the first
        # of them to see an event counts it for all.
        if windows.last_view is not event:
            value = 1 if self.counts else self._event_value(event, role)
            windows.last_view = event
            if value is None:
                windows.last_added = None
            else:
                window = windows.get(key) or self._window(key)
                counted = window.add(event.ts, value, engine.clock, event.id)
                windows.last_added = counted
                windows.last_value = window.value(engine.clock) if counted else None
        added = windows.last_added
        if not added:
            if added is None:
                engine.stats.count_skipped(self.name)
            else:
                engine.stats.count_late(self.name)
            return
        state = self.states.get(key) or self._state(key)
        state.trigger = (event.id, event.type)
        self.evaluate(engine, key, engine.clock, windows.last_value, state)

    def on_timer(self, engine: Engine, key: Any, due: float) -> None:
        """Re-evaluate a key when its `for`, cooldown or repeat time comes."""
        state = self.states.get(key)
        if state is None or state.timer_due != due:
            return
        state.timer_due = None
        window = self.windows.get(key)
        if window is not None:
            self.evaluate(engine, key, due, window.value(due), state)

    def _schedule(self, engine: Engine, key: Any, state: _KeyState, due: float) -> None:
        if state.timer_due is not None and state.timer_due <= due:
            return
        state.timer_due = due
        engine.schedule(due, self, key)

    def evaluate(
        self,
        engine: Engine,
        key: Any,
        now: float,
        value: float | None,
        state: _KeyState,
    ) -> None:
        """Decide, from the aggregate's value at `now`, whether the rule fires."""
        if value is None:
            return
        verdict = self._verdicts.get(value)
        if verdict is None:
            verdict = self._decode(engine.match_value(self.fact_name, value))
            if len(self._verdicts) >= 4096:
                self._verdicts.clear()
            self._verdicts[value] = verdict
        if self.threshold is None:
            self._evaluate_bands(engine, key, state, now, value, verdict)
        elif verdict[0] or state.fired or state.pending_since is not None:
            self._evaluate_threshold(engine, key, state, now, value, verdict)
        # Otherwise the bound does not hold and nothing is pending: nothing to do.

    def _decode(self, names: tuple[str, ...]) -> tuple[Any, Any]:
        """Turn durable-rules' answer into (holds, clears) or (band, stays)."""
        prefix = self.name
        if self.threshold is not None:
            return (f"{prefix}#fire" in names, f"{prefix}#clear" in names)
        assert self.classify is not None
        bands = [b.name for b in self.classify.bands]
        inside = next((b for b in bands if f"{prefix}#in#{b}" in names), None)
        stays = frozenset(b for b in bands if f"{prefix}#stay#{b}" in names)
        return (inside, stays)

    def _evaluate_threshold(
        self,
        engine: Engine,
        key: Any,
        state: _KeyState,
        now: float,
        value: float,
        verdict: tuple[bool, bool],
    ) -> None:
        threshold = self.threshold
        assert threshold is not None
        holds, clears = verdict
        if state.fired:
            if clears:
                state.fired = False
                state.pending_since = None
            elif holds and threshold.repeat is not None:
                due = state.last_fire + threshold.repeat
                if now >= due:
                    self._fire_threshold(engine, key, state, now, value)
                else:
                    self._schedule(engine, key, state, due)
            return
        if not holds:
            state.pending_since = None
            return

        wait = threshold.for_
        if wait:
            if state.pending_since is None:
                state.pending_since = now
            due = state.pending_since + wait
            if now < due:
                self._schedule(engine, key, state, due)
                return
        cooldown_end = state.last_fire + (self.cooldown or 0)
        if now < cooldown_end:
            engine.stats.count_suppressed(self.name)
            self._schedule(engine, key, state, cooldown_end)
            return
        state.fired = True
        self._fire_threshold(engine, key, state, now, value)

    def _fire_threshold(
        self, engine: Engine, key: Any, state: _KeyState, now: float, value: float
    ) -> None:
        # With `repeat`, the next firing needs a timer: while the value holds
        # there may be no event to re-evaluate the key when it falls due.
        self._fire(engine, key, state, now, value)
        assert self.threshold is not None
        if self.threshold.repeat is not None:
            self._schedule(engine, key, state, now + self.threshold.repeat)

    def _evaluate_bands(
        self,
        engine: Engine,
        key: Any,
        state: _KeyState,
        now: float,
        value: float,
        verdict: tuple[str | None, frozenset[str]],
    ) -> None:
        classify = self.classify
        assert classify is not None
        inside, stays = verdict
        if inside is None:
            return
        if state.band == inside or state.band in stays:
            state.candidate = None
            state.pending_since = None
            return

        if state.candidate != inside:
            state.candidate = inside
            state.pending_since = now
        wait = classify.for_ or 0
        due = (state.pending_since or now) + wait
        if now < due:
            self._schedule(engine, key, state, due)
            return
        cooldown_end = state.last_fire + (self.cooldown or 0)
        if now < cooldown_end:
            engine.stats.count_suppressed(self.name)
            self._schedule(engine, key, state, cooldown_end)
            return
        previous = state.band
        state.band = inside
        state.candidate = None
        state.pending_since = None
        self._fire(engine, key, state, now, value, band=inside, previous=previous)

    def _fire(
        self,
        engine: Engine,
        key: Any,
        state: _KeyState,
        now: float,
        value: float,
        band: str | None = None,
        previous: str | None = None,
    ) -> None:
        state.last_fire = now
        state.pending_since = None
        window = self.windows[key]
        why = Explanation(
            self.description, _round(value), window.recent_ids(now), self.version
        )
        context = {
            "value": _round(value),
            "key": key,
            "band": band,
            "previous": previous,
        }
        trigger_id, trigger_type = state.trigger or ("", "")
        trigger = {"event_id": trigger_id, "type": trigger_type}
        engine.fire(self, trigger, now, context, why, None)

    def describe_condition(self) -> str:
        """Return the aggregate and its threshold or bands in words."""
        aggregate = self.aggregate
        subject: str = aggregate.fn
        if self.fields:
            subject += f" of {' + '.join(self.fields)}"
        if aggregate.window is not None:
            subject += f" over {format_duration(aggregate.window)}"
        if aggregate.by:
            subject += f" per {aggregate.by}"
        threshold = self.threshold
        if threshold is not None:
            bound = (
                f"above {threshold.above:g}"
                if threshold.above is not None
                else f"below {threshold.below:g}"
            )
            text = f"{subject} {bound}"
            if threshold.for_:
                text += f" for {format_duration(threshold.for_)}"
            return text
        assert self.classify is not None
        bands = ", ".join(
            f"{b.name} below {b.below:g}" if b.below is not None else b.name
            for b in self.classify.bands
        )
        return f"{subject} in bands ({bands}), hysteresis {self.classify.hysteresis:g}"

    def sweep(self, now: float) -> None:
        """Drop keys whose window is empty and whose state is idle."""
        super().sweep(now)
        if self.aggregate.by is None:
            return
        for key in list(self.windows):
            window = self.windows[key]
            window.expire(now)
            state = self.states.get(key)
            idle = state is None or (
                not state.fired
                and state.pending_since is None
                and state.timer_due is None
            )
            if window.is_empty() and idle:
                del self.windows[key]
                self.states.pop(key, None)

    def snapshot(self) -> dict[str, Any]:
        """Return windows and per-key state as JSON-compatible data."""
        data = super().snapshot()
        data["windows"] = [[k, w.snapshot()] for k, w in self.windows.items()]
        data["states"] = [
            [k, {name: getattr(s, name) for name in _KEY_STATE_FIELDS}]
            for k, s in self.states.items()
        ]
        for _, state in data["states"]:
            if state["last_fire"] == -math.inf:
                state["last_fire"] = None
        return data

    def restore(self, data: dict[str, Any]) -> None:
        """Load windows and per-key state saved by `snapshot`."""
        super().restore(data)
        # Without saved windows (the aggregate changed) the group is left as
        # it is: it may be shared with a rule whose windows were restored.
        if "windows" in data:
            # Cleared in place: the group may be shared with other rules.
            self.windows.clear()
            self.windows.last_view = None
            for key, saved in data["windows"]:
                self._window(key).restore(saved)
        self.states = {}
        for key, saved in data.get("states", []):
            saved = dict(saved)
            if saved["last_fire"] is None:
                saved["last_fire"] = -math.inf
            self.states[key] = _KeyState(**saved)


def _round(value: float) -> float | int:
    # Whole values print as integers, but only within the range a float
    # holds exactly: a larger int would not fit the 64-bit encoders.
    if float(value).is_integer() and abs(value) < 2**53:
        return int(value)
    return round(value, 6)


class CorrelationRuntime(RuleRuntime):
    """Fire when a `then` event follows a `first` event with the same key."""

    def __init__(self, loaded: LoadedRule, version: str) -> None:
        super().__init__(loaded, version)
        correlate = self.spec.correlate
        assert correlate is not None
        self.correlate = correlate
        # Insertion order is time order: a key is removed before re-insertion.
        self.pending: dict[Any, dict[str, Any]] = {}
        self.evicted = 0
        self.expired = 0

    def on_event(self, engine: Engine, event: Event, role: str) -> None:
        """Remember a `first` event, or fire when its `then` arrives in time."""
        self.expire(event.ts)
        key = event.read(self.correlate.key)
        if key is None or isinstance(key, dict | list):
            engine.stats.count_skipped(self.name)
            return
        if role == "then":
            first = self.pending.get(key)
            if first is None or event.ts - first["ts"] > self.correlate.within:
                return
            del self.pending[key]
            why = Explanation(
                self.description, None, [first["id"], event.id], self.version
            )
            context = {"key": key, "first": first["event"]}
            engine.fire(self, event.summary(), event.ts, context, why, event.mapping())
            return

        if key in self.pending:
            return
        self.pending[key] = {"ts": event.ts, "id": event.id, "event": event.mapping()}
        if len(self.pending) > self.correlate.max_pending:
            # Bounded memory wins over completeness: the oldest partial
            # match goes, and the loss is counted.
            del self.pending[next(iter(self.pending))]
            self.evicted += 1

    def expire(self, now: float) -> None:
        """Drop partial matches older than the correlation's lifetime."""
        horizon = now - self.correlate.within
        pending = self.pending
        while pending:
            key = next(iter(pending))
            if pending[key]["ts"] >= horizon:
                break
            del pending[key]
            self.expired += 1

    def sweep(self, now: float) -> None:
        """Expire partial matches."""
        super().sweep(now)
        self.expire(now)

    def describe_condition(self) -> str:
        """Return the correlation in words."""
        c = self.correlate
        return (
            f"{' or '.join(c.then.on)} within {format_duration(c.within)} of "
            f"{' or '.join(c.first.on)} with the same {c.key}"
        )

    def snapshot(self) -> dict[str, Any]:
        """Return the partial matches as JSON-compatible data."""
        data = super().snapshot()
        data["pending"] = [[k, v] for k, v in self.pending.items()]
        return data

    def restore(self, data: dict[str, Any]) -> None:
        """Load partial matches saved by `snapshot`."""
        super().restore(data)
        self.pending = {k: v for k, v in data.get("pending", [])}


def build_runtime(loaded: LoadedRule, version: str) -> RuleRuntime:
    """Return the runtime that fits the rule's kind."""
    spec = loaded.spec
    if spec.correlate is not None:
        return CorrelationRuntime(loaded, version)
    if spec.aggregate is not None:
        return AggregateRuntime(loaded, version)
    return EventRuntime(loaded, version)

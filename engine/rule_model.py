"""The rule language: pydantic models of one rule file.

A rule file holds `rules:` and, in at most one file of a directory,
`tiers:` (the platform tiers and their configuration) and `settings:`.
`docs/rules.md` explains every construct with examples; the JSON Schema
that editors use is generated from these models.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictInt,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from engine.conditions import Condition, find_condition_errors, parse_condition
from engine.durations import DurationError, parse_duration

__all__ = [
    "ActionSpec",
    "Aggregate",
    "Band",
    "Classify",
    "Correlate",
    "CorrelationSide",
    "RuleFile",
    "RuleSpec",
    "Settings",
    "Threshold",
    "TierConfig",
]

RULE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,79}$")


def _to_seconds(value: Any) -> float:
    try:
        return parse_duration(value)
    except DurationError as error:
        hint = f" Hint: {error.hint}." if error.hint else ""
        raise ValueError(f"{error}{hint}") from error


Duration = Annotated[
    float,
    BeforeValidator(_to_seconds),
    PlainSerializer(lambda s: s, return_type=float),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^(\d+(\.\d+)?(ms|s|m|h|d|w))+$",
            "description": "A duration such as 500ms, 30s, 5m, 1h30m or 7d.",
        }
    ),
]

EventTypes = Annotated[
    list[Annotated[str, Field(min_length=1)]],
    BeforeValidator(lambda v: [v] if isinstance(v, str) else v),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "minItems": 1},
            ],
            "description": "One event type or a list of them.",
        }
    ),
]

ConditionField = Annotated[
    dict[str, Any],
    WithJsonSchema(
        {
            "type": "object",
            "description": (
                "Field tests: a path such as data.amount mapped to a value "
                "(equality) or to operators eq, ne, gt, gte, lt, lte, in, "
                "exists, prefix, contains; 'all' and 'any' take lists."
            ),
        }
    ),
]


class _Model(BaseModel):
    # No NaN or infinity: a threshold of .nan or .inf could never fire, and
    # durable-rules refuses the ruleset it compiles to.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ActionSpec(_Model):
    """One action a rule runs when it fires."""

    action: str = Field(description="Name of a registered handler.")
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Handler parameters; strings may hold {{ path }} templates.",
    )
    coalesce: Duration | None = Field(
        default=None,
        description=(
            "At most one action per distinct parameters per interval of event "
            "time; the handler's default applies when absent."
        ),
    )


class Aggregate(_Model):
    """A value computed over a sliding window of event time."""

    fn: Literal[
        "count", "sum", "avg", "min", "max", "distinct", "latest", "balance"
    ] = Field(
        description=(
            "The function: count events, sum/avg/min/max/latest a field, count "
            "distinct values, or keep a balance of plus minus minus events."
        )
    )
    field: str | list[str] | None = Field(
        default=None,
        description="Path of the value; a list of paths is summed per event.",
    )
    window: Duration | None = Field(
        default=None, description="The sliding window of event time."
    )
    by: str | None = Field(default=None, description="Path of the grouping key.")
    plus: list[str] = Field(
        default_factory=list, description="Event types that add one to a balance."
    )
    minus: list[str] = Field(
        default_factory=list,
        description="Event types that take one from a balance.",
    )
    resolution: Duration | None = Field(
        default=None, description="Bucket width; window/60 (at least 1s) by default."
    )

    @model_validator(mode="after")
    def _check_shape(self) -> Aggregate:
        needs_field = self.fn in ("sum", "avg", "min", "max", "distinct", "latest")
        if needs_field and self.field is None:
            raise ValueError(f"The aggregate {self.fn!r} needs a 'field'.")
        if self.fn in ("count", "balance") and self.field is not None:
            raise ValueError(f"The aggregate {self.fn!r} takes no 'field'.")
        if self.fn == "balance" and not (self.plus or self.minus):
            raise ValueError("The aggregate 'balance' needs 'plus' or 'minus' types.")
        if self.fn != "balance" and (self.plus or self.minus):
            raise ValueError("Only the aggregate 'balance' takes 'plus' and 'minus'.")
        if self.fn not in ("balance", "latest") and self.window is None:
            raise ValueError(f"The aggregate {self.fn!r} needs a 'window'.")
        if self.window is not None and self.window <= 0:
            raise ValueError("The window must be longer than zero.")
        return self


class Threshold(_Model):
    """Fire when the aggregate crosses a bound, with hysteresis."""

    above: float | None = Field(
        default=None, description="Fire when the value rises above this."
    )
    below: float | None = Field(
        default=None, description="Fire when the value falls below this."
    )
    clear_below: float | None = Field(
        default=None, description="Re-arm only once the value falls below this."
    )
    clear_above: float | None = Field(
        default=None, description="Re-arm only once the value rises above this."
    )
    for_: Duration | None = Field(
        default=None, alias="for", description="The condition must hold this long."
    )
    repeat: Duration | None = Field(
        default=None, description="Fire again every interval while it still holds."
    )

    @model_validator(mode="after")
    def _check_bounds(self) -> Threshold:
        if (self.above is None) == (self.below is None):
            raise ValueError("A threshold needs exactly one of 'above' or 'below'.")
        if self.above is not None:
            if self.clear_above is not None:
                raise ValueError("An 'above' threshold re-arms with 'clear_below'.")
            if self.clear_below is not None and self.clear_below > self.above:
                raise ValueError(
                    f"clear_below {self.clear_below:g} is above the threshold "
                    f"{self.above:g}, so the rule could never re-arm. Hint: set "
                    f"clear_below under {self.above:g}."
                )
        if self.below is not None:
            if self.clear_below is not None:
                raise ValueError("A 'below' threshold re-arms with 'clear_above'.")
            if self.clear_above is not None and self.clear_above < self.below:
                raise ValueError(
                    f"clear_above {self.clear_above:g} is below the threshold "
                    f"{self.below:g}, so the rule could never re-arm. Hint: set "
                    f"clear_above over {self.below:g}."
                )
        return self


class Band(_Model):
    """One band of a classification: values below `below` (or any, if last)."""

    name: str = Field(description="The band's name, passed to actions as band.")
    below: float | None = Field(
        default=None, description="Values under this bound; the last band has none."
    )


class Classify(_Model):
    """Place the aggregate in one of ordered bands, without flapping."""

    bands: list[Band] = Field(
        min_length=2, description="At least two bands, lowest bound first."
    )
    hysteresis: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Fraction by which a value must pass a boundary to move.",
    )
    for_: Duration | None = Field(
        default=None, alias="for", description="A new band must hold this long."
    )
    initial: str | None = Field(default=None, description="Band before any data.")

    @model_validator(mode="after")
    def _check_bands(self) -> Classify:
        names = [band.name for band in self.bands]
        if len(set(names)) != len(names):
            raise ValueError("Band names must be distinct.")
        bounds = [band.below for band in self.bands]
        if bounds[-1] is not None:
            raise ValueError("The last band takes no 'below'; it holds the rest.")
        if any(b is None for b in bounds[:-1]):
            raise ValueError("Every band but the last needs 'below'.")
        finite = [b for b in bounds[:-1] if b is not None]
        if finite != sorted(finite) or len(set(finite)) != len(finite):
            raise ValueError(
                "Band bounds must rise strictly from first to last. Hint: order "
                "the bands from the lowest 'below' to the highest."
            )
        if self.initial is not None and self.initial not in names:
            raise ValueError(f"The initial band {self.initial!r} is not a band.")
        return self


class CorrelationSide(_Model):
    """One side of a correlation: event types and an optional condition."""

    on: EventTypes
    when: ConditionField | None = Field(
        default=None, description="Field tests this side's event must pass."
    )


class Correlate(_Model):
    """Fire when `then` follows `first` with the same key within a time."""

    first: CorrelationSide = Field(description="The event that opens a pair.")
    then: CorrelationSide = Field(description="The event that completes a pair.")
    key: str = Field(description="Path of the key both events share.")
    within: Duration = Field(description="The longest time from first to then.")
    max_pending: int = Field(
        default=100_000, gt=0, description="Open pairs kept before the oldest go."
    )


class RuleSpec(_Model):
    """One rule as written in a rule file."""

    name: str = Field(
        description="Unique name: lower-case letters, digits, '-', '_' or '.'."
    )
    description: str | None = Field(
        default=None, description="What the rule is for, in words."
    )
    priority: StrictInt = Field(default=0, description="Higher fires first.")
    mode: Literal["active", "shadow"] = Field(
        default="active",
        description="'shadow' records the actions without carrying them out.",
    )
    on: EventTypes | None = None
    when: ConditionField | None = None
    aggregate: Aggregate | None = None
    threshold: Threshold | None = None
    classify: Classify | None = None
    correlate: Correlate | None = None
    cooldown: Duration | None = Field(
        default=None, description="After firing, stay quiet for this long."
    )
    actions: list[ActionSpec] = Field(
        min_length=1, description="What to do when the rule fires, in order."
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not RULE_NAME.match(value):
            raise ValueError(
                f"The rule name {value!r} must be lower-case letters, digits, "
                "'-', '_' or '.', starting with a letter or digit."
            )
        return value

    @model_validator(mode="after")
    def _check_kind(self) -> RuleSpec:
        if self.correlate is not None:
            if self.on is not None or self.when is not None or self.aggregate:
                raise ValueError(
                    "A correlation rule names its events in correlate.first and "
                    "correlate.then, without 'on', 'when' or 'aggregate'."
                )
        elif self.on is None and not (
            self.aggregate and self.aggregate.fn == "balance"
        ):
            raise ValueError("The rule needs 'on': the event types it reads.")
        if (self.threshold or self.classify) and self.aggregate is None:
            raise ValueError("'threshold' and 'classify' need an 'aggregate'.")
        if self.threshold and self.classify:
            raise ValueError("A rule takes either 'threshold' or 'classify', not both.")
        if self.aggregate and not (self.threshold or self.classify):
            raise ValueError("An aggregate rule needs a 'threshold' or 'classify'.")
        return self

    def parsed_when(self) -> Condition | None:
        """Return the parsed `when` condition."""
        return parse_condition(self.when) if self.when is not None else None

    def event_types(self) -> list[str]:
        """Return every event type the rule reads."""
        if self.correlate is not None:
            return [*self.correlate.first.on, *self.correlate.then.on]
        types = list(self.on or [])
        if self.aggregate is not None:
            types += [t for t in (*self.aggregate.plus, *self.aggregate.minus)]
        return list(dict.fromkeys(types))


class FunctionsConfig(_Model):
    """Cloud Functions memory, timeout and instance bounds of a tier."""

    memoryMb: int = Field(gt=0)
    timeoutSeconds: int = Field(gt=0)
    minInstances: int = Field(ge=0)
    maxInstances: int = Field(gt=0)


class FirestoreConfig(_Model):
    """Firestore throughput ceilings of a tier."""

    readsPerSecond: int = Field(gt=0)
    writesPerSecond: int = Field(gt=0)


class StorageConfig(_Model):
    """Storage bandwidth and size of a tier."""

    bandwidthMbps: int = Field(gt=0)
    sizeGb: int = Field(gt=0)


class FeatureFlags(_Model):
    """Platform features a tier turns on."""

    caching: bool = False
    cdn: bool = False
    multiRegion: bool = False
    sharding: bool = False
    edgeComputing: bool = False


class AlertThresholds(_Model):
    """Alert bounds that apply in a tier."""

    responseTimeMs: float = Field(gt=0)
    errorRate: float = Field(gt=0, le=1)
    cpuPercent: float = Field(gt=0, le=100)


class TierConfig(_Model):
    """The resource and feature configuration of one platform tier."""

    functions: FunctionsConfig
    firestore: FirestoreConfig
    storage: StorageConfig
    features: FeatureFlags
    alerts: AlertThresholds

    @model_validator(mode="after")
    def _check_instances(self) -> TierConfig:
        if self.functions.minInstances > self.functions.maxInstances:
            raise ValueError("minInstances is above maxInstances.")
        return self


class Settings(_Model):
    """Engine settings that rule files may set."""

    initial_tier: str | None = Field(
        default=None, description="The tier before any rule changes it."
    )
    # The schema shows the defaults as written in rule files, not in seconds.
    state_retention: Duration = Field(
        default=30 * 86400.0,
        description="How long rule state is kept; no window may be longer.",
        json_schema_extra={"default": "30d"},
    )
    dedup_retention: Duration = Field(
        default=7 * 86400.0,
        description="How long event ids are remembered to drop redeliveries.",
        json_schema_extra={"default": "7d"},
    )
    max_clock_jump: Duration = Field(
        default=30 * 86400.0,
        description=(
            "An event further ahead of the engine's clock than this is "
            "rejected: one wrong timestamp would otherwise make every later "
            "event late for its windows."
        ),
        json_schema_extra={"default": "30d"},
    )


class RuleFile(_Model):
    """The content of one rule file."""

    version: Literal[1] = Field(default=1, description="The rule language version.")
    settings: Settings | None = Field(
        default=None, description="Engine settings; in one file of a directory."
    )
    tiers: dict[str, TierConfig] | None = Field(
        default=None, description="Platform tiers by name; in one file only."
    )
    rules: list[RuleSpec] = Field(default_factory=list, description="The rules.")


def check_conditions(rule: RuleSpec) -> list[tuple[tuple[str | int, ...], str]]:
    """Return (location, message) for every problem of every condition of a rule."""
    correlate = rule.correlate
    return check_raw_conditions(
        {
            "when": rule.when,
            "correlate": None
            if correlate is None
            else {
                "first": {"when": correlate.first.when},
                "then": {"when": correlate.then.when},
            },
        }
    )


def check_raw_conditions(item: Any) -> list[tuple[tuple[str | int, ...], str]]:
    """Return the problems of the conditions of a rule mapping as written.

    For a rule whose other fields are invalid, so that no `RuleSpec` can be
    built, its conditions are still checked in the same run.
    """
    item = item if isinstance(item, dict) else {}
    sides: list[tuple[tuple[str | int, ...], Any]] = [(("when",), item.get("when"))]
    correlate = item.get("correlate")
    if isinstance(correlate, dict):
        for side in ("first", "then"):
            part = correlate.get(side)
            if isinstance(part, dict):
                sides.append((("correlate", side, "when"), part.get("when")))
    found: list[tuple[tuple[str | int, ...], str]] = []
    for where, raw in sides:
        if isinstance(raw, dict):
            found += [
                (error.path, str(error)) for error in find_condition_errors(raw, where)
            ]
    return found

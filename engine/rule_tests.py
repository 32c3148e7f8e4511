"""Rule tests: events in, expected actions out, written in YAML.

A test file holds `tests:`, a list of cases. Each case feeds events to a
fresh engine on event time and compares the actions with its expectations::

    tests:
      - name: a burst of contributions doubles the payment functions
        series: {type: contribution.created, rate: 60/m, for: 1m, data: {...}}
        expect:
          - {at: +50s, rule: scale-payments-on-contribution-burst,
             action: scale, params: {factor: 2}}

Times (`at`, `start`, `until`) are RFC 3339 times or offsets such as `+30s`
from the case's `start` (default 2024-01-01T00:00:00Z). `events` lists
single events; `series` expands `rate` (such as `40/m`) over `for` into
evenly spaced events with ids `series1-00001`, `series1-00002`, ... A case
sends at most `MAX_CASE_EVENTS` (100,000) events, its series included. The
clock stops at the last event, or at `until` when given, so that `for`
timers and held coalesced actions can be awaited.

Expectations are scoped by rule, as in Prometheus rule tests: the actions
of every rule named in `expect` must be exactly the expected ones (missing,
unexpected and different ones all fail), rules in `expect_none_from` must
stay silent, and other rules are not looked at. `expect: none` means no
action from any rule at all. `params` and `result` match as subsets.
Every rule named must be one the rules define.
A top-level `definitions:` mapping holds values that cases share through
YAML anchors, such as the data of an event type.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from engine.actions import ActionRecord
from engine.durations import DurationError, format_duration, parse_duration
from engine.engine import Engine
from engine.errors import EventRejected, RuleLoadError, RuleProblem, RuleTestError
from engine.events import Event, event_from_mapping, format_time, parse_time
from engine.loader import RuleSet, load_rules
from engine.yaml_source import Marks, YamlSyntaxError, load_with_marks

__all__ = [
    "MAX_CASE_EVENTS",
    "CaseResult",
    "Mismatch",
    "RuleTestCase",
    "expand_series",
    "load_test_file",
    "render_result",
    "run_case",
    "run_test_files",
]

DEFAULT_START = "2024-01-01T00:00:00Z"
# Times closer than this are one time: event times carry milliseconds.
_SAME_TIME = 0.0005
# The most events one case may send. A case runs in memory, so a series
# such as 1000000000/s for 1000d would exhaust it long before any check
# ran; rules are tested with minutes or hours of events, far below this.
MAX_CASE_EVENTS = 100_000


# The file format


@dataclass(frozen=True)
class Moment:
    """A point in time: an offset from the case's start, or a fixed time."""

    offset: float | None = None
    ts: float | None = None

    def resolve(self, start: float) -> float:
        """Return the time in epoch seconds."""
        return self.ts if self.ts is not None else start + (self.offset or 0.0)


def _parse_moment(value: Any) -> Moment:
    if isinstance(value, Moment):
        return value
    if isinstance(value, datetime):
        # YAML reads an unquoted timestamp as a datetime.
        if value.tzinfo is None:
            raise ValueError(f"The time {value} has no zone; add Z or an offset.")
        return Moment(ts=value.timestamp())
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is neither a time nor an offset such as +30s.")
    if value.startswith("+"):
        try:
            return Moment(offset=parse_duration(value[1:]))
        except DurationError as error:
            raise ValueError(f"{error} Hint: {error.hint}.") from error
    try:
        return Moment(ts=parse_time(value).timestamp())
    except EventRejected as error:
        raise ValueError(
            f"{value!r} is neither a time such as 2024-01-01T00:00:00Z nor an "
            "offset such as +30s."
        ) from error


def _parse_span(value: Any) -> float:
    try:
        return parse_duration(value)
    except DurationError as error:
        raise ValueError(f"{error} Hint: {error.hint}.") from error


def _parse_rate(value: Any) -> float:
    """Return events per second from a rate such as `40/m` or `3/10s`."""
    count, _, period = str(value).partition("/")
    try:
        number = float(count)
        seconds = parse_duration(period if period[:1].isdigit() else f"1{period}")
    except (ValueError, DurationError) as error:
        raise ValueError(
            f"The rate {value!r} is not a count per period. Hint: write it like "
            "40/m, 2/s or 100/1h."
        ) from error
    if not math.isfinite(number):
        raise ValueError(
            f"The rate {value!r} is not a count per period. Hint: write the "
            "count as a number, like 40/m."
        )
    if number <= 0 or seconds <= 0:
        raise ValueError(f"The rate {value!r} must be above zero.")
    return number / seconds


MomentField = Annotated[Moment, BeforeValidator(_parse_moment)]
SpanField = Annotated[float, BeforeValidator(_parse_span)]
RateField = Annotated[float, BeforeValidator(_parse_rate)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EventSpec(_Model):
    """One event of a case."""

    type: str = Field(min_length=1)
    at: MomentField = Moment(offset=0.0)
    id: str | None = None
    source: str = "/rule-tests"
    subject: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class SeriesSpec(_Model):
    """Evenly spaced events of one type: `rate` over `for` from `start`."""

    type: str = Field(min_length=1)
    rate: RateField
    for_: SpanField = Field(alias="for")
    start: MomentField = Moment(offset=0.0)
    source: str = "/rule-tests"
    data: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_size(self) -> SeriesSpec:
        if self.count() > MAX_CASE_EVENTS:
            raise ValueError(_too_many(f"The series makes {self.count():,} events"))
        return self

    def count(self) -> int:
        """Return how many events the series makes."""
        return round(self.for_ * self.rate)


def _too_many(what: str) -> str:
    return (
        f"{what}, more than the {MAX_CASE_EVENTS:,} a case may send. Hint: "
        "lower the rate or shorten 'for'; a rule test needs only enough "
        "events to cross the rule's bounds."
    )


class ExpectedAction(_Model):
    """One action a case expects; unset fields match anything."""

    rule: str
    action: str | None = None
    at: MomentField | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    result: dict[str, Any] | None = None
    outcome: str | None = None


class RuleTestCase(_Model):
    """One case: rules, events and the actions they must cause."""

    name: str = Field(min_length=1)
    rules: str | None = None
    start: MomentField = Moment(ts=parse_time(DEFAULT_START).timestamp())
    until: MomentField | None = None
    events: list[EventSpec] = Field(default_factory=list)
    series: list[SeriesSpec] = Field(default_factory=list)
    expect: list[ExpectedAction] | Literal["none"] | None = None
    expect_none_from: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _one_series_as_list(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("series"), dict):
            return {**data, "series": [data["series"]]}
        return data

    @model_validator(mode="after")
    def _check_case(self) -> RuleTestCase:
        if not (self.events or self.series):
            raise ValueError("A case needs 'events' or 'series'.")
        if self.expect is None and not self.expect_none_from:
            raise ValueError("A case needs 'expect' or 'expect_none_from'.")
        if self.expect == []:
            raise ValueError("An empty 'expect' checks nothing; write 'expect: none'.")
        if self.start.ts is None:
            raise ValueError("The start of a case is a time, not an offset.")
        total = len(self.events) + sum(series.count() for series in self.series)
        if total > MAX_CASE_EVENTS:
            raise ValueError(_too_many(f"The case sends {total:,} events"))
        return self

    def start_ts(self) -> float:
        """Return the case's start in epoch seconds."""
        return self.start.resolve(0.0)


class RuleTestFile(_Model):
    """The content of one rule test file."""

    # Values the cases share through YAML anchors; not read otherwise.
    definitions: dict[str, Any] = Field(default_factory=dict)
    tests: list[RuleTestCase] = Field(min_length=1)


_FIELD_NAMES = sorted(
    {
        field.alias or name
        for model in (EventSpec, SeriesSpec, ExpectedAction, RuleTestCase)
        for name, field in model.model_fields.items()
    }
)


# Keys that name a field of a rule test by another word, by the list they
# are written in. `time` is the CloudEvents attribute, so it is what an
# event's time is most often called; a spelling check would not find `at`.
_OTHER_NAMES: dict[str, dict[str, str]] = {
    "events": {"time": "at"},
    "expect": {"time": "at"},
    "series": {"time": "start"},
}


def _meant_field(loc: tuple[str | int, ...]) -> str | None:
    """Return the field that an unknown key at `loc` most likely means."""
    unknown = str(loc[-1])
    lists = [part for part in loc[:-1] if part in _OTHER_NAMES]
    if lists and unknown in _OTHER_NAMES[str(lists[-1])]:
        return _OTHER_NAMES[str(lists[-1])][unknown]
    close = difflib.get_close_matches(unknown, _FIELD_NAMES, n=1)
    return close[0] if close else None


def load_test_file(path: str | Path) -> list[RuleTestCase]:
    """Read and check a rule test file.

    Raises:
        RuleTestError: the file cannot be read, is not YAML or a case is
            malformed; the message names the file, line and column.
    """
    return _read_test_file(path)[0]


def _read_test_file(path: str | Path) -> tuple[list[RuleTestCase], Marks]:
    """Read and check a rule test file; return its cases and their places."""
    name = str(path)
    try:
        raw, marks = load_with_marks(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise RuleTestError(
            _problem(name, 1, 1, f"The file cannot be read: {error}.")
        ) from error
    except YamlSyntaxError as error:
        raise RuleTestError(
            _problem(name, error.line, error.column, str(error), error.hint)
        ) from error
    try:
        return RuleTestFile.model_validate(raw).tests, marks
    except ValidationError as error:
        lines = []
        for item in error.errors():
            line, column = marks.locate(tuple(item["loc"]))
            where = ".".join(str(part) for part in item["loc"]) or "the file"
            message, hint = _explain(dict(item))
            lines.append(_problem(name, line, column, f"{where}: {message}", hint))
        raise RuleTestError("\n".join(lines)) from error


def _problem(
    file: str, line: int, column: int, message: str, hint: str | None = None
) -> str:
    """Word a problem of a test file as `validate` words one of a rule file."""
    return str(RuleProblem(file, line, column, None, message, hint))


def _explain(error: dict[str, Any]) -> tuple[str, str | None]:
    """Word one pydantic finding about a test file: a sentence and a hint."""
    if error["type"] == "extra_forbidden":
        meant = _meant_field(tuple(error["loc"]))
        hint = f"did you mean {meant!r}?" if meant else "remove it"
        return "This is not a field of a rule test.", hint
    if error["type"] == "missing" and error["loc"]:
        return "This field is required.", f"add '{error['loc'][-1]}'"
    # The parsers of times, durations and rates end their messages with
    # "Hint: ...", the only place a pydantic validator can put one.
    message = str(error["msg"]).removeprefix("Value error, ")
    message, _, hint = message.partition(" Hint: ")
    message = message if message.endswith(".") else f"{message}."
    return message, hint.rstrip(".") or None


# Running a case


def expand_series(series: SeriesSpec, number: int, start: float) -> Iterator[Event]:
    """Yield the events of one series; `number` (from 1) names their ids."""
    interval = 1.0 / series.rate
    first = series.start.resolve(start)
    for index in range(series.count()):
        mapping = {
            "specversion": "1.0",
            "id": f"series{number}-{index + 1:05d}",
            "source": series.source,
            "type": series.type,
            "time": format_time(first + index * interval),
            "data": series.data,
        }
        yield event_from_mapping(mapping)


def _case_events(case: RuleTestCase) -> list[Event]:
    """Return the case's events in time order.

    Raises:
        RuleTestError: an event is not one the engine would accept.
    """
    start = case.start_ts()
    events: list[Event] = []
    for index, spec in enumerate(case.events):
        mapping: dict[str, Any] = {
            "specversion": "1.0",
            "id": spec.id or f"event{index + 1}",
            "source": spec.source,
            "type": spec.type,
            "time": format_time(spec.at.resolve(start)),
            "data": spec.data,
        }
        if spec.subject is not None:
            mapping["subject"] = spec.subject
        try:
            events.append(event_from_mapping(mapping))
        except EventRejected as error:
            raise RuleTestError(
                f"The event events.{index} is rejected: {error}"
            ) from error
    for number, series in enumerate(case.series, start=1):
        try:
            events.extend(expand_series(series, number, start))
        except EventRejected as error:
            raise RuleTestError(
                f"The events of series.{number - 1} are rejected: {error}"
            ) from error
    # A stable sort: at one time, listed events come before series.
    return sorted(events, key=lambda event: event.ts)


@dataclass
class Mismatch:
    """One difference between the expected and the actual actions."""

    kind: Literal["missing", "unexpected", "different"]
    expected: ExpectedAction | None = None
    actual: ActionRecord | None = None
    details: list[str] = field(default_factory=list)


@dataclass
class CaseResult:
    """The outcome of one case."""

    file: str
    name: str
    status: Literal["pass", "fail", "error"]
    start: float = 0.0
    mismatches: list[Mismatch] = field(default_factory=list)
    error: str | None = None


def run_case(case: RuleTestCase, ruleset: RuleSet, file: str = "") -> CaseResult:
    """Run one case on a fresh engine and compare its actions."""
    start = case.start_ts()
    try:
        events = _case_events(case)
    except RuleTestError as error:
        return CaseResult(file, case.name, "error", start, error=str(error))

    # A case's timeline is written on purpose: days apart are allowed.
    engine = Engine(ruleset, max_clock_jump=math.inf)
    try:
        for event in events:
            engine.process(event)
        if case.until is not None:
            engine.advance_to(case.until.resolve(start))
        actions = engine.take_actions()
    finally:
        engine.close()

    mismatches = compare_actions(case, actions)
    status: Literal["pass", "fail"] = "fail" if mismatches else "pass"
    return CaseResult(file, case.name, status, start, mismatches)


def compare_actions(case: RuleTestCase, actions: list[ActionRecord]) -> list[Mismatch]:
    """Return every difference between a case's expectations and the actions."""
    start = case.start_ts()
    expected = case.expect if isinstance(case.expect, list) else []
    if case.expect == "none":
        checked = actions
    else:
        scope = {item.rule for item in expected} | set(case.expect_none_from)
        checked = [action for action in actions if action.rule in scope]

    # Two passes: exact matches first, so that a near miss is paired with
    # the action it was meant for rather than with whatever came first.
    unmatched = list(checked)
    pending: list[ExpectedAction] = []
    for item in expected:
        found = _find(item, unmatched, start, exact=True)
        if found is None:
            pending.append(item)
        else:
            unmatched.remove(found)

    mismatches: list[Mismatch] = []
    for item in pending:
        found = _find(item, unmatched, start, exact=False)
        if found is None:
            mismatches.append(Mismatch("missing", expected=item))
            continue
        unmatched.remove(found)
        details = _differences(item, found)
        mismatches.append(Mismatch("different", item, found, details))
    mismatches += [Mismatch("unexpected", actual=action) for action in unmatched]
    return sorted(mismatches, key=lambda m: _mismatch_time(m, start))


def _mismatch_time(mismatch: Mismatch, start: float) -> float:
    if mismatch.actual is not None:
        return mismatch.actual.at
    expected = mismatch.expected
    if expected is not None and expected.at is not None:
        return expected.at.resolve(start)
    return float("inf")


def _find(
    item: ExpectedAction, actions: list[ActionRecord], start: float, exact: bool
) -> ActionRecord | None:
    at = item.at.resolve(start) if item.at is not None else None
    for action in actions:
        if action.rule != item.rule:
            continue
        if item.action is not None and action.action != item.action:
            continue
        if at is not None and abs(action.at - at) > _SAME_TIME:
            continue
        if exact and _differences(item, action):
            continue
        return action
    return None


def _differences(item: ExpectedAction, action: ActionRecord) -> list[str]:
    found = _subset_differences("params", item.params, action.params)
    if item.result is not None:
        found += _subset_differences("result", item.result, action.result or {})
    if item.outcome is not None and item.outcome != action.outcome:
        found.append(f"outcome: expected {item.outcome!r}, got {action.outcome!r}")
    return found


def _subset_differences(
    label: str, expected: dict[str, Any], actual: dict[str, Any]
) -> list[str]:
    found = []
    for key, value in expected.items():
        if key not in actual:
            found.append(f"{label}.{key}: expected {_show(value)}, got nothing")
        elif actual[key] != value:
            found.append(
                f"{label}.{key}: expected {_show(value)}, got {_show(actual[key])}"
            )
    return found


# Files and reports


def run_test_files(
    paths: list[Path], rules: str | Path | None = None
) -> Iterator[CaseResult]:
    """Run every case of every file, loading each rules directory once.

    A case's own `rules` (relative to its file) comes first, then `rules`,
    then the directory above the test file's (so `rules/tests/x.yaml` tests
    `rules/`).
    """
    loaded: dict[Path, RuleSet | str] = {}
    for path in paths:
        try:
            cases, marks = _read_test_file(path)
        except RuleTestError as error:
            yield CaseResult(str(path), "(the whole file)", "error", error=str(error))
            continue
        for index, case in enumerate(cases):
            if case.rules is not None:
                directory = (path.parent / case.rules).resolve()
            elif rules is not None:
                directory = Path(rules).resolve()
            else:
                directory = path.parent.parent.resolve()
            if directory not in loaded:
                loaded[directory] = _load(directory)
            ruleset = loaded[directory]
            if isinstance(ruleset, str):
                yield CaseResult(str(path), case.name, "error", error=ruleset)
                continue
            unknown = _unknown_rules(case, ruleset, str(path), index, marks)
            if unknown:
                problems = "\n".join(unknown)
                yield CaseResult(str(path), case.name, "error", error=problems)
                continue
            yield run_case(case, ruleset, str(path))


def _unknown_rules(
    case: RuleTestCase, ruleset: RuleSet, file: str, index: int, marks: Marks
) -> list[str]:
    """Return a located problem for each rule name the rules do not define.

    A misspelt name in `expect_none_from` would otherwise pass silently:
    a rule that does not exist never fires.
    """
    names = [rule.spec.name for rule in ruleset.rules]
    where = ("tests", index)
    references: list[tuple[tuple[str | int, ...], str]] = [
        ((*where, "expect", position, "rule"), item.rule)
        for position, item in enumerate(
            case.expect if isinstance(case.expect, list) else []
        )
    ]
    references += [
        ((*where, "expect_none_from", position), name)
        for position, name in enumerate(case.expect_none_from)
    ]
    problems = []
    for loc, name in references:
        if name in names:
            continue
        line, column = marks.locate(loc)
        close = difflib.get_close_matches(name, names, n=1)
        hint = (
            f"did you mean {close[0]!r}?"
            if close
            else "name a rule by its 'name' field in the rule files"
        )
        place = ".".join(str(part) for part in loc)
        message = f"{place}: The rules define no rule named {name!r}."
        problems.append(_problem(file, line, column, message, hint))
    return problems


def _load(directory: Path) -> RuleSet | str:
    try:
        return load_rules(directory)
    except RuleLoadError as error:
        return str(error)


def render_result(result: CaseResult) -> str:
    """Return a case's verdict line and, when it failed, its differences."""
    head = f"{result.status.upper()} {result.file}: {result.name}"
    if result.status == "error":
        lines = str(result.error).splitlines()
        return "\n".join([head, *(f"  {line}" for line in lines)])
    lines = [head]
    for mismatch in result.mismatches:
        lines += _render_mismatch(mismatch, result.start)
    return "\n".join(lines)


def _render_mismatch(mismatch: Mismatch, start: float) -> list[str]:
    actual, expected = mismatch.actual, mismatch.expected
    if actual is not None:
        when = _when(actual.at, start)
        line = f"  {mismatch.kind:<10}  {when:<8}  {actual.rule}  {actual.action}"
        if expected is None:
            return [f"{line} {_show(actual.params)}"]
        return [line, *(f"      {detail}" for detail in mismatch.details)]
    assert expected is not None
    when = _when(expected.at.resolve(start), start) if expected.at else "any time"
    action = expected.action or "any action"
    line = f"  {mismatch.kind:<10}  {when:<8}  {expected.rule}  {action}"
    return [line + _describe_expected(expected)]


def _describe_expected(expected: ExpectedAction) -> str:
    text = f" {_show(expected.params)}" if expected.params else ""
    if expected.result is not None:
        text += f" result {_show(expected.result)}"
    if expected.outcome is not None:
        text += f" outcome {expected.outcome}"
    return text


def _when(ts: float, start: float) -> str:
    offset = round(ts - start, 3)
    if offset < 0:
        return format_time(ts)
    if offset == 0:
        return "+0s"
    if offset.is_integer():
        return "+" + format_duration(offset)
    return f"+{offset:g}s"


def _show(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()

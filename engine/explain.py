"""Explain one recorded action in words: what fired, when, why, with what.

The action log is what `replay --actions-out` writes: one JSON line per
action, as `ActionRecord.to_mapping` returns it. Every record carries its
reasons (the rule's condition, the value it saw, the contributing events
and the rules version), so an explanation needs no replay.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import orjson

from engine.actions import ActionRecord, Explanation
from engine.errors import ConfigurationError, EventRejected
from engine.events import format_time, parse_time
from engine.loader import LoadedRule, RuleSet
from engine.replay import iter_numbered_lines, open_stream

__all__ = ["explain_action", "find_action", "record_from_mapping", "rule_source"]

# Ids are hex digests; a shorter prefix would match too much to be useful.
_MIN_PREFIX = 4
# Contributing events listed by id; a count stands for the rest.
_EVENTS_LISTED = 10


def find_action(path: str | Path, action_id: str) -> ActionRecord:
    """Return the action with this id, or with this unique id prefix.

    Raises:
        ConfigurationError: the file is missing, holds no such action, the
            prefix is ambiguous or too short, or a line is not a record.
    """
    if len(action_id) < _MIN_PREFIX:
        raise ConfigurationError(
            f"The action id {action_id!r} is too short; give at least "
            f"{_MIN_PREFIX} characters."
        )
    try:
        matches = _search(path, action_id)
    except (EOFError, zlib.error, OSError) as error:
        raise ConfigurationError(
            f"The action log {str(path)!r} could not be read to its end: {error}."
        ) from error
    if not matches:
        raise ConfigurationError(f"No action with the id {action_id!r} is in {path}.")
    if len(matches) > 1:
        raise ConfigurationError(
            f"The id {action_id!r} starts {len(matches)} action ids in {path}; "
            "give more characters."
        )
    return record_from_mapping(matches[0], path)


def _search(path: str | Path, action_id: str) -> list[dict[str, Any]]:
    """Return the records of the action log whose id starts with `action_id`."""
    matches: list[dict[str, Any]] = []
    with open_stream(path, "action log") as stream:
        for number, line in iter_numbered_lines(stream):
            # Most lines are other actions: look for the id before parsing.
            if action_id.encode() not in line:
                continue
            try:
                mapping = orjson.loads(line)
            except orjson.JSONDecodeError as error:
                raise ConfigurationError(
                    f"Line {number} of {path} is not a JSON action record."
                ) from error
            if str(mapping.get("id", "")).startswith(action_id):
                matches.append(mapping)
    return matches


def record_from_mapping(mapping: dict[str, Any], path: str | Path) -> ActionRecord:
    try:
        why = mapping.get("why", {})
        trigger = mapping.get("trigger", {})
        return ActionRecord(
            id=mapping["id"],
            at=parse_time(mapping["at"]).timestamp(),
            rule=mapping["rule"],
            action=mapping["action"],
            params=mapping.get("params", {}),
            trigger_id=trigger.get("event_id", ""),
            trigger_type=trigger.get("type", ""),
            why=Explanation(
                why.get("condition", ""),
                why.get("value"),
                why.get("events", []),
                why.get("rules_version", ""),
            ),
            outcome=mapping.get("outcome", "pending"),
            result=mapping.get("result"),
            error=mapping.get("error"),
        )
    except (KeyError, TypeError, AttributeError, EventRejected) as error:
        raise ConfigurationError(
            f"The action {mapping.get('id')!r} in {path} is not a complete "
            f"action record: {error}."
        ) from error


def explain_action(
    record: ActionRecord, rules: RuleSet | None = None, rules_dir: str = ""
) -> str:
    """Return the action's story in words, and the rule as it is now if given."""
    why = record.why
    at = format_time(record.at)
    lines = [
        f"Action {record.id}: the rule {record.rule!r} ran {record.action!r} "
        f"at {at} (event time).",
        f"Condition:     {why.condition or 'not recorded'}",
    ]
    if why.value is not None:
        lines.append(f"Value seen:    {_show(why.value)}")
    lines.append(f"Trigger:       event {record.trigger_id} ({record.trigger_type})")
    lines.append(f"Events:        {_events_text(why.events)}")
    lines.append(f"Rules version: {why.version or 'not recorded'}")
    lines.append(f"Params:        {_fields(record.params)}")
    lines.append(f"Outcome:       {_outcome_text(record)}")
    if record.result is not None:
        lines.append(f"Result:        {_fields(record.result)}")

    if rules is not None:
        lines.append("")
        lines += _current_rule(record, rules, rules_dir)
    return "\n".join(lines)


def _events_text(events: list[str]) -> str:
    # An aggregate records only the latest events of its window, so the
    # list says how many were recorded, not how many the value counts.
    if not events:
        return "none recorded"
    listed = ", ".join(events[:_EVENTS_LISTED])
    rest = len(events) - _EVENTS_LISTED
    more = f" and {rest} more" if rest > 0 else ""
    return f"{listed}{more} ({len(events)} recorded, oldest first)"


def _outcome_text(record: ActionRecord) -> str:
    if record.outcome == "ok":
        return "ok: the handler carried it out"
    if record.outcome == "shadow":
        return "shadow: recorded, not carried out (the rule is in shadow mode)"
    if record.outcome == "failed":
        return f"failed: {record.error or 'no error recorded'}"
    return record.outcome


def _current_rule(record: ActionRecord, rules: RuleSet, rules_dir: str) -> list[str]:
    where = f"in {rules_dir} " if rules_dir else ""
    loaded = rules.by_name(record.rule)
    if loaded is None:
        return [
            f"Warning: the rule {record.rule!r} is no longer {where}"
            f"(rules version {rules.version})."
        ]
    lines = []
    if rules.version != record.why.version:
        lines.append(
            f"Warning: the rules {where}are version {rules.version}, not "
            f"{record.why.version or 'the unrecorded version'} under which this "
            "action was decided; the rule may have changed since."
        )
    lines.append(f"The rule now, at {loaded.file}:{loaded.line}:")
    lines.append(rule_source(loaded))
    return lines


def rule_source(loaded: LoadedRule) -> str:
    """Return the rule's text as written, comments and all."""
    text = Path(loaded.file).read_text(encoding="utf-8").splitlines()
    first = text[loaded.line - 1]
    # The rule's own lines are indented deeper than its "- " item marker.
    indent = len(first) - len(first.lstrip())
    block = [first]
    for line in text[loaded.line :]:
        stripped = line.lstrip()
        if stripped and len(line) - len(stripped) <= indent:
            break
        block.append(line)
    while block and not block[-1].strip():
        block.pop()
    return "\n".join(block)


def _fields(values: dict[str, Any]) -> str:
    if not values:
        return "none"
    # Sorted, so that the text is the same whichever log the record came
    # from (Firestore keeps its own order of map keys).
    return ", ".join(f"{key}={_show(values[key])}" for key in sorted(values))


def _show(value: Any) -> str:
    return orjson.dumps(value).decode()

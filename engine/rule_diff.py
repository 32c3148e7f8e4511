"""Compare what two rule sets do with one recorded stream.

The stream is replayed twice, each time through its own engine, and the
actions are matched by what identifies one decision: the rule, the action,
the triggering event and the event time, plus an ordinal for the rare rule
that runs the same action twice for one trigger. The action id is not the
key, because it hashes the action's position in the rule: moving an action
within a rule would show every one of its actions as removed and added.

Per rule, an action is added (only after), removed (only before), changed
(same key, but other params, outcome, result or error) or unchanged. A
threshold that moves makes the same decision at another time; that shows
as one removed and one added action, which is what happened.

Both action lists are held in memory: actions are far fewer than events,
but a rule set that fires on every event of a long stream needs memory in
proportion.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from engine.actions import ActionRecord
from engine.engine import Engine
from engine.events import format_time
from engine.loader import RuleSet
from engine.replay import ReplaySummary, replay_stream

__all__ = [
    "ActionKey",
    "RuleDiff",
    "RuleSetDiff",
    "diff_actions",
    "diff_rule_sets",
    "render_diff",
    "replay_actions",
]

ActionKey = tuple[str, str, str, int, int]
# Fields whose difference makes a matched action "changed".
_COMPARED = ("params", "outcome", "result", "error")


@dataclass
class RuleDiff:
    """How the actions of one rule differ between two rule sets."""

    added: list[ActionRecord] = field(default_factory=list)
    removed: list[ActionRecord] = field(default_factory=list)
    changed: list[tuple[ActionRecord, ActionRecord, list[str]]] = field(
        default_factory=list
    )
    unchanged: int = 0

    @property
    def differs(self) -> bool:
        """Tell whether any action of the rule was added, removed or changed."""
        return bool(self.added or self.removed or self.changed)


@dataclass
class RuleSetDiff:
    """The differences of every rule, with the two replays' summaries."""

    before_version: str
    after_version: str
    before: ReplaySummary
    after: ReplaySummary
    rules: dict[str, RuleDiff]


def replay_actions(
    events_path: str | Path, ruleset: RuleSet
) -> tuple[list[ActionRecord], ReplaySummary]:
    """Replay the stream on a fresh engine and return every action."""
    actions: list[ActionRecord] = []
    engine = Engine(ruleset, on_action=actions.append)
    try:
        summary = replay_stream(events_path, ruleset, engine=engine)
    finally:
        engine.close()
    return actions, summary


def diff_rule_sets(
    events_path: str | Path, before: RuleSet, after: RuleSet
) -> RuleSetDiff:
    """Replay the stream under both rule sets and compare their actions."""
    old, old_summary = replay_actions(events_path, before)
    new, new_summary = replay_actions(events_path, after)
    return RuleSetDiff(
        before.version,
        after.version,
        old_summary,
        new_summary,
        diff_actions(old, new),
    )


def diff_actions(
    before: list[ActionRecord], after: list[ActionRecord]
) -> dict[str, RuleDiff]:
    """Match two action lists by key and sort the differences by rule."""
    old = _keyed(before)
    new = _keyed(after)
    rules: dict[str, RuleDiff] = {}
    for key, record in old.items():
        diff = rules.setdefault(record.rule, RuleDiff())
        other = new.get(key)
        if other is None:
            diff.removed.append(record)
            continue
        differences = _differences(record, other)
        if differences:
            diff.changed.append((record, other, differences))
        else:
            diff.unchanged += 1
    for key, record in new.items():
        if key not in old:
            rules.setdefault(record.rule, RuleDiff()).added.append(record)
    return dict(sorted(rules.items()))


def _keyed(records: list[ActionRecord]) -> dict[ActionKey, ActionRecord]:
    seen: Counter[tuple[str, str, str, int]] = Counter()
    keyed: dict[ActionKey, ActionRecord] = {}
    for record in records:
        base = (record.rule, record.action, record.trigger_id, round(record.at * 1000))
        keyed[(*base, seen[base])] = record
        seen[base] += 1
    return keyed


def _differences(before: ActionRecord, after: ActionRecord) -> list[str]:
    old, new = before.to_mapping(), after.to_mapping()
    found = []
    for name in _COMPARED:
        found += _compare(name, old.get(name), new.get(name))
    return found


def _compare(path: str, old: Any, new: Any) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(old.keys() | new.keys(), key=str):
            found += _compare(f"{path}.{key}", old.get(key), new.get(key))
        return found
    if old == new:
        return []
    return [f"{path}: {_show(old)} -> {_show(new)}"]


# Reports


def diff_mapping(diff: RuleSetDiff, examples: int) -> dict[str, Any]:
    """Return the diff as JSON-compatible data with up to `examples` each."""
    rules = {}
    for name, rule in diff.rules.items():
        rules[name] = {
            "added": len(rule.added),
            "removed": len(rule.removed),
            "changed": len(rule.changed),
            "unchanged": rule.unchanged,
            "examples": {
                "added": [r.to_mapping() for r in rule.added[:examples]],
                "removed": [r.to_mapping() for r in rule.removed[:examples]],
                "changed": [
                    {
                        "before": old.to_mapping(),
                        "after": new.to_mapping(),
                        "differences": differences,
                    }
                    for old, new, differences in rule.changed[:examples]
                ],
            },
        }
    return {
        "before": {"rules_version": diff.before_version, **_counts(diff.before)},
        "after": {"rules_version": diff.after_version, **_counts(diff.after)},
        "rules": rules,
    }


def _counts(summary: ReplaySummary) -> dict[str, int]:
    return {
        "events_read": summary.read,
        "events_accepted": summary.accepted,
        "actions": sum(summary.engine.actions.values()),
    }


def render_diff(diff: RuleSetDiff, examples: int) -> str:
    """Return the diff as lines for people: a table, then examples per rule."""
    before, after = _counts(diff.before), _counts(diff.after)
    lines = [
        f"events: read {before['events_read']}, accepted {before['events_accepted']}",
        f"actions: {before['actions']} before (rules {diff.before_version}), "
        f"{after['actions']} after (rules {diff.after_version})",
    ]
    changed = {name: rule for name, rule in diff.rules.items() if rule.differs}
    if not changed:
        lines.append("No action differs.")
        return "\n".join(lines)

    width = max(len(name) for name in changed)
    lines.append("")
    lines.append(f"{'rule':<{width}}  added  removed  changed  unchanged")
    for name, rule in changed.items():
        lines.append(
            f"{name:<{width}}  {len(rule.added):>5}  {len(rule.removed):>7}  "
            f"{len(rule.changed):>7}  {rule.unchanged:>9}"
        )
    same = len(diff.rules) - len(changed)
    if same:
        lines.append(f"({same} other rules acted exactly as before)")

    for name, rule in changed.items():
        if examples <= 0:
            break
        lines += ["", f"{name}:"]
        lines += [f"  + {_describe(r)}" for r in rule.added[:examples]]
        lines += [f"  - {_describe(r)}" for r in rule.removed[:examples]]
        for old, _, differences in rule.changed[:examples]:
            lines.append(f"  ~ {_describe(old)}")
            lines += [f"      {difference}" for difference in differences]
    return "\n".join(lines)


def _describe(record: ActionRecord) -> str:
    return (
        f"{format_time(record.at)} {record.action} {_show(record.params)} "
        f"trigger {record.trigger_id}"
    )


def _show(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()

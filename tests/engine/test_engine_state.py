"""Engine state survives a snapshot and restore, also under edited rules."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson

from engine.engine import Engine
from engine.events import Event, format_time
from engine.loader import load_rules

ROOT = Path(__file__).resolve().parents[2]
START = 1_700_000_000.0


def _contribution(number: int, ts: float) -> Event:
    return Event(
        id=f"c-{number}",
        source="/test",
        type="contribution.created",
        time=format_time(ts),
        ts=ts,
        data={
            "contributionId": f"c-{number}",
            "projectId": "p-1",
            "contributorUid": "u-1",
            "amount": 10,
            "currency": "EUR",
        },
    )


def _run(engine: Engine, events: list[Event]) -> list[str]:
    fired = []
    for event in events:
        fired += [f"{a.rule}@{a.at}" for a in engine.process(event)]
    return fired


def _burst(first: int, count: int) -> list[Event]:
    return [_contribution(n, START + n) for n in range(first, first + count)]


def test_a_restored_engine_continues_exactly() -> None:
    """Snapshot halfway through a burst, restore elsewhere: the same actions."""
    rules = load_rules(ROOT / "rules")
    events = _burst(0, 80)

    whole = _run(Engine(rules), events)
    first = Engine(rules)
    before = _run(first, events[:30])
    saved = orjson.loads(orjson.dumps(first.snapshot()))
    second = Engine(rules)
    second.restore(saved)
    after = _run(second, events[30:])

    assert before + after == whole
    assert "scale-payments-on-contribution-burst@1700000050.0" in whole


def test_restore_under_a_changed_aggregate_keeps_state_but_not_windows(
    tmp_path: Path,
) -> None:
    """A rule whose window changed starts counting afresh; others keep counting."""
    rules = load_rules(ROOT / "rules")
    edited_dir = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", edited_dir)
    scaling = edited_dir / "scaling.yaml"
    burst_rule = "threshold: {above: 50, clear_below: 40}"
    scaling.write_text(
        scaling.read_text().replace(
            f"aggregate: {{fn: count, window: 1m}}\n    {burst_rule}",
            f"aggregate: {{fn: count, window: 2m}}\n    {burst_rule}",
        )
    )
    edited = load_rules(edited_dir)
    first = Engine(rules)
    _run(first, _burst(0, 40))
    saved = orjson.loads(orjson.dumps(first.snapshot()))

    second = Engine(edited)
    second.restore(saved)
    up = second.runtimes["scale-payments-on-contribution-burst"]
    down = second.runtimes["scale-payments-down-when-quiet"]

    assert up.windows == {}  # type: ignore[attr-defined]
    assert down.windows[None].value(START + 39) == 40  # type: ignore[attr-defined]

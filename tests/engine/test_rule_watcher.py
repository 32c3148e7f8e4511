"""Tests of hot reload: the watcher notices edits, the engine thread swaps."""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from engine.commands import validate
from engine.engine import Engine
from engine.events import event_from_mapping, format_time
from engine.loader import RuleSet, load_rules
from engine.observability import Observability
from engine.rule_watcher import RuleCheck, RuleWatcher
from tests.engine.conftest import OBSERVABILITY_FIXTURES, FakeClock

EDITS = OBSERVABILITY_FIXTURES / "edits"
START = 1_704_067_200.0  # 2024-01-01T00:00:00Z

pytestmark = pytest.mark.usefixtures("all_log_levels")


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    """A copy of the shop rules that a test may edit."""
    directory = tmp_path / "rules"
    shutil.copytree(OBSERVABILITY_FIXTURES / "rules", directory)
    return directory


@pytest.fixture
def engine(rules_dir: Path) -> Iterator[Engine]:
    engine = Engine(load_rules(rules_dir))
    yield engine
    engine.close()


@pytest.fixture
def observability(engine: Engine) -> Observability:
    observability = Observability()
    observability.set_rules(engine.ruleset)
    return observability


@pytest.fixture
def watcher(rules_dir: Path) -> Iterator[RuleWatcher]:
    with RuleWatcher(rules_dir) as watcher:
        yield watcher


def place(engine: Engine, *numbers: int) -> list[tuple[str, str]]:
    """Process orders 10 s apart; return each action's rule and params title."""
    actions = []
    for number in numbers:
        event = event_from_mapping(
            {
                "specversion": "1.0",
                "id": f"order-{number}",
                "source": "/shop",
                "type": "shop.order_placed",
                "time": format_time(START + 10 * number),
                "data": {"orderId": f"o-{number}", "total": 20},
            }
        )
        for record in engine.process(event):
            actions.append((record.rule, str(record.why.value)))
    return actions


def edit(rules_dir: Path, fixture: str) -> None:
    """Save an edited rule file over the shop rules, as an editor would."""
    (rules_dir / "shop.yaml").write_text((EDITS / fixture).read_text())


def wait_for_reload(
    watcher: RuleWatcher, engine: Engine, observability: Observability
) -> RuleCheck:
    """Call the watcher between 'batches' until it acts, as the worker does."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        check = watcher.reload_engine(engine, observability)
        if check is not None:
            return check
        time.sleep(0.02)
    raise AssertionError("The watcher did not act on the edit within 10 s.")


def validate_output(rules_dir: Path, capsys: pytest.CaptureFixture[str]) -> str:
    validate.run(argparse.Namespace(rules=str(rules_dir), format="text"))
    return capsys.readouterr().out


def test_a_valid_edit_reloads_and_an_unchanged_rule_keeps_its_window(
    watcher: RuleWatcher,
    engine: Engine,
    observability: Observability,
    rules_dir: Path,
) -> None:
    """Four orders before the edit and two after make order-burst's six."""
    before = place(engine, 1, 2, 3, 4)
    edit(rules_dir, "added_rule.yaml")
    with capture_logs() as logs:
        check = wait_for_reload(watcher, engine, observability)
    after = place(engine, 5, 6)

    new_version = load_rules(rules_dir).version
    assert check.ruleset is not None
    assert engine.ruleset.version == new_version
    assert before == []
    # Rules of equal priority fire in file order: order-burst comes first.
    assert after == [
        ("order-echo", "None"),
        ("order-burst", "6"),
        ("order-echo", "None"),
    ]
    assert [entry["event"] for entry in logs] == ["rules reloaded"]
    assert logs[0]["version"] == new_version
    assert logs[0]["log_level"] == "info"
    assert observability.status()["rules"]["version"] == new_version
    assert observability.health()["rules_stale"] is False


def test_an_invalid_edit_keeps_the_rules_running_until_a_valid_one(
    watcher: RuleWatcher,
    engine: Engine,
    observability: Observability,
    rules_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Problems read as `validate` prints them; the rules go stale, then not."""
    first_version = engine.ruleset.version
    place(engine, 1, 2, 3)

    edit(rules_dir, "never_rearms.yaml")
    with capture_logs() as logs:
        failed = wait_for_reload(watcher, engine, observability)
    expected_report = validate_output(rules_dir, capsys)
    during = place(engine, 4, 5, 6)
    stale = (observability.health()["rules_stale"], watcher.stale)
    stale_metric = observability.registry.get_sample_value("rules_engine_rules_stale")
    shown = observability.status()["reload"]

    edit(rules_dir, "added_rule.yaml")
    with capture_logs() as later_logs:
        wait_for_reload(watcher, engine, observability)

    assert failed.ruleset is None
    assert failed.report() + "\n" == expected_report
    assert engine.ruleset.version != first_version
    assert during == [("order-burst", "6")]
    assert stale == (True, True)
    assert stale_metric == 1.0
    assert logs == [
        {
            "event": "rules reload failed",
            "log_level": "error",
            "rules_dir": str(rules_dir),
            "running_version": first_version,
            "problems": failed.report().splitlines(),
        }
    ]
    assert (shown["ok"], shown["problems"]) == (False, failed.report().splitlines())
    assert [entry["event"] for entry in later_logs] == ["rules reloaded"]
    assert (observability.health()["rules_stale"], watcher.stale) == (False, False)


def test_reverting_a_broken_edit_clears_staleness_without_a_reload(
    engine: Engine, observability: Observability, rules_dir: Path
) -> None:
    """The files are back to the running version: nothing to swap."""
    watcher = RuleWatcher(rules_dir, debounce=0.0)
    original = (rules_dir / "shop.yaml").read_text()
    running = engine.runtimes

    edit(rules_dir, "never_rearms.yaml")
    watcher.notice_change()
    failed = watcher.reload_engine(engine, observability)
    (rules_dir / "shop.yaml").write_text(original)
    watcher.notice_change()
    with capture_logs() as logs:
        restored = watcher.reload_engine(engine, observability)

    assert failed is not None and failed.ruleset is None
    assert restored is not None and restored.ruleset is not None
    assert engine.runtimes is running
    assert [(e["event"], e["version"]) for e in logs] == [
        ("rules reloaded", engine.ruleset.version)
    ]
    assert observability.health()["rules_stale"] is False


def test_a_change_that_leaves_the_rules_as_they_are_reloads_nothing(
    engine: Engine, observability: Observability, rules_dir: Path
) -> None:
    """An editor's temporary file is checked, found equal, and ignored."""
    watcher = RuleWatcher(rules_dir, debounce=0.0)
    (rules_dir / "4913").write_text("")
    watcher.notice_change()
    running = engine.runtimes

    with capture_logs() as logs:
        check = watcher.reload_engine(engine, observability)

    assert check is None
    assert engine.runtimes is running
    assert logs == []


def test_changes_are_checked_once_they_have_been_quiet_for_the_debounce(
    rules_dir: Path,
) -> None:
    """A save in several steps is one check, after its last step."""
    clock = FakeClock(0.0)
    watcher = RuleWatcher(rules_dir, debounce=0.2, clock=clock)
    polls = []
    # The first poll checks anyway, for edits made before the watch began.
    for step, changed in [
        (0.1, False),
        (0.15, False),
        (0.0, True),
        (0.15, True),
        (0.1, False),
        (0.05, False),
        (0.06, False),
        (0.5, False),
    ]:
        clock.advance(step)
        if changed:
            watcher.notice_change()
        polls.append(watcher.poll() is not None)

    assert polls == [False, True, False, False, False, False, True, False]


def test_a_reload_the_engine_refuses_puts_the_previous_rules_back(
    engine: Engine,
    observability: Observability,
    rules_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rule set the checks passed but the matcher refused goes stale."""
    watcher = RuleWatcher(rules_dir, debounce=0.0)
    previous = engine.ruleset
    reload = engine.reload

    def refuse_new_rules(ruleset: RuleSet) -> None:
        if ruleset.version != previous.version:
            raise RuntimeError("the matcher refused the rule set")
        reload(ruleset)

    monkeypatch.setattr(engine, "reload", refuse_new_rules)
    place(engine, 1, 2, 3, 4, 5)
    edit(rules_dir, "added_rule.yaml")
    watcher.notice_change()
    with capture_logs() as logs:
        check = watcher.reload_engine(engine, observability)

    assert check is not None and check.ruleset is None
    assert check.report().splitlines() == [
        f"{rules_dir}:1:1: The engine could not switch to the new rules: the "
        "matcher refused the rule set",
        "1 problem in 1 file.",
    ]
    assert engine.ruleset.version == previous.version
    assert place(engine, 6) == [("order-burst", "6")]
    assert [entry["event"] for entry in logs] == ["rules reload failed"]
    assert watcher.stale is True


def _resident_bytes() -> int:
    # The second field of statm is the resident set, in pages.
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_a_thousand_reloads_do_not_grow_memory(engine: Engine, rules_dir: Path) -> None:
    """Each reload frees the old matcher: the resident set stays within 4 MiB."""
    original = engine.ruleset
    edit(rules_dir, "added_rule.yaml")
    edited = load_rules(rules_dir)
    place(engine, 1, 2, 3)
    # Warm-up: allocator pools and caches settle in the first reloads.
    for index in range(50):
        engine.reload(edited if index % 2 == 0 else original)
    gc.collect()
    before = _resident_bytes()

    for index in range(1000):
        engine.reload(edited if index % 2 == 0 else original)
    gc.collect()
    growth = _resident_bytes() - before

    assert engine.ruleset.version == original.version
    assert place(engine, 4, 5, 6) == [("order-burst", "6")]
    assert growth < 4 * 1024 * 1024, f"grew by {growth / 1024:.0f} KiB"

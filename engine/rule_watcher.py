"""Watch a rules directory and swap edited rules in between batches.

durable-rules is not thread-safe, so the reload itself happens on the
engine thread: the watcher's own thread only notes that something under
the directory changed, and the engine thread calls `reload_engine` (or
`poll`) between batches, which checks the files again and, if they load,
hands them to `Engine.reload`.

Reload policy:

1. A change is acted on once the directory has been quiet for the debounce
   interval, so an editor's save in several steps (truncate, write, rename)
   is one reload, never a reload of a half-written file.
2. Every change under the directory is checked, not only `.yaml` files: a
   Kubernetes ConfigMap volume swaps a `..data` symlink and never touches
   the `.yaml` names. The rules version (a digest of the files) then tells
   a real edit from an editor's temporary file, which reloads nothing.
3. Rules that fail to load are reported as `rules-engine validate` reports
   them, and the previous rules keep running, marked stale, until a later
   edit loads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
import watchfiles

from engine.commands.validate import render_problems
from engine.engine import Engine
from engine.errors import RuleProblem
from engine.loader import RuleSet, check_rules
from engine.observability import Observability
from handlers.registry import HandlerRegistry
from infra.closing import Started

__all__ = ["RuleCheck", "RuleWatcher"]

log = structlog.get_logger(__name__)

# Long enough to cover the steps of one editor save, short enough that an
# operator sees the new rules run right after saving.
DEBOUNCE_SECONDS = 0.2


@dataclass(frozen=True)
class RuleCheck:
    """The rules found on disk after a change: a rule set, or its problems."""

    ruleset: RuleSet | None
    problems: list[RuleProblem]

    def report(self) -> str:
        """Return the problems exactly as `rules-engine validate` prints them."""
        ordered = sorted(self.problems, key=lambda p: (p.file, p.line, p.column))
        return render_problems(ordered)


class RuleWatcher(Started):
    """Notice edits under a rules directory and check them on request.

    Args:
        rules_dir: The directory (or single file) the rules load from.
        registry: The handlers that actions are checked against.
        debounce: Seconds of quiet after a change before it is checked.
        clock: Returns monotonic seconds; tests pass a fake one.
        force_polling: Poll the files instead of using inotify, for
            file systems that send no notifications; None lets watchfiles
            decide.
        prepare: Applied to every rule set that loads, before it runs;
            the worker puts its own settings over the files' this way.
    """

    def __init__(
        self,
        rules_dir: str | Path,
        registry: HandlerRegistry | None = None,
        debounce: float = DEBOUNCE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        force_polling: bool | None = None,
        prepare: Callable[[RuleSet], RuleSet] | None = None,
    ) -> None:
        self.rules_dir = Path(rules_dir)
        self.stale = False
        self._registry = registry
        self._debounce = debounce
        self._clock = clock
        self._force_polling = force_polling
        self._prepare = prepare
        self._lock = threading.Lock()
        # An edit made between loading the rules and starting the watch
        # would otherwise go unnoticed, so the first poll checks anyway.
        self._changed_at: float | None = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start watching in a daemon thread."""
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._watch, name="rule-watcher", daemon=True
        )
        self._thread.start()
        log.info("rule watcher started", rules_dir=str(self.rules_dir))

    def close(self) -> None:
        """Stop watching and wait for the thread to end."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        log.info("rule watcher stopped", rules_dir=str(self.rules_dir))

    def _watch(self) -> None:
        try:
            for _ in watchfiles.watch(
                self.rules_dir,
                stop_event=self._stop,
                force_polling=self._force_polling,
                raise_interrupt=False,
            ):
                self.notice_change()
        except Exception as error:  # reported, since hot reload stops here
            log.error(
                "rule watcher failed", rules_dir=str(self.rules_dir), error=str(error)
            )

    def notice_change(self) -> None:
        """Note that the rules may have changed; safe from any thread."""
        with self._lock:
            self._changed_at = self._clock()

    def poll(self) -> RuleCheck | None:
        """Check the rules again if they changed and have since been quiet.

        Returns None when there is nothing to check yet. Call it on the
        engine thread; it reads the files but leaves the engine alone.
        """
        with self._lock:
            changed_at = self._changed_at
            if changed_at is None or self._clock() - changed_at < self._debounce:
                return None
            self._changed_at = None

        ruleset, problems = check_rules(self.rules_dir, self._registry)
        if ruleset is not None and self._prepare is not None:
            ruleset = self._prepare(ruleset)
        return RuleCheck(ruleset, problems)

    def reload_engine(
        self, engine: Engine, observability: Observability | None = None
    ) -> RuleCheck | None:
        """Swap in the rules on disk if they changed and load; call between batches.

        Returns the check when it changed something (new rules, a failed
        reload, or stale rules made current again), None otherwise.
        """
        check = self.poll()
        if check is None:
            return None
        if check.ruleset is None:
            self._mark_failed(engine, check, observability)
            return check

        ruleset = check.ruleset
        previous = engine.ruleset
        if ruleset.version == previous.version and not self.stale:
            # An editor's temporary file or a save without a change.
            return None
        if ruleset.version != previous.version:
            try:
                engine.reload(ruleset)
            except Exception as error:  # durable-rules may refuse what loaded
                return self._undo_reload(engine, previous, error, observability)

        self.stale = False
        log.info(
            "rules reloaded",
            rules_dir=str(self.rules_dir),
            version=ruleset.version,
            previous_version=previous.version,
            rules=len(ruleset.rules),
        )
        if observability is not None:
            observability.set_rules(ruleset)
            observability.mark_reload(True)
        return check

    def _mark_failed(
        self, engine: Engine, check: RuleCheck, observability: Observability | None
    ) -> None:
        self.stale = True
        report = check.report()
        log.error(
            "rules reload failed",
            rules_dir=str(self.rules_dir),
            running_version=engine.ruleset.version,
            problems=report.splitlines(),
        )
        if observability is not None:
            observability.mark_reload(False, report.splitlines())

    def _undo_reload(
        self,
        engine: Engine,
        previous: RuleSet,
        error: Exception,
        observability: Observability | None,
    ) -> RuleCheck:
        """Put the previous rules back after the engine refused new ones.

        The engine's rule state is carried over from whatever runtimes it
        holds, so a failure before the switch loses nothing; one after it
        restarts the windows of the rules it had already rebuilt.
        """
        engine.reload(previous)
        problem = RuleProblem(
            str(self.rules_dir),
            1,
            1,
            None,
            f"The engine could not switch to the new rules: {error}",
        )
        check = RuleCheck(None, [problem])
        self._mark_failed(engine, check, observability)
        return check

"""Check the worker's backends in the background, for readiness and idleness.

Firestore tells the worker when it fails: every commit goes there. The
other backends may fail unnoticed:

1. A handler's backend (the Redis of `invalidate_cache`) is only called
   when a rule fires, so with Redis down `/readyz` stayed ready while
   every invalidation failed. Any backend object of a handler that has a
   `ping` method is pinged.
2. A Pub/Sub pull that gets no answer before its deadline returns no
   messages, which is also what an idle subscription returns: a paused
   or unreachable Pub/Sub looked like a quiet stream, and
   `--exit-when-idle` ended the run while messages waited. The
   subscription is described instead, which must answer whatever the
   traffic, and the worker confirms that it answers before it calls
   itself idle.

Each check runs in the probe's thread with a timeout of its own; a
failing one makes `/readyz` fail with its reason, logged once as it
starts failing and once as it recovers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import structlog

from engine.errors import HandlerNotFound

if TYPE_CHECKING:
    from engine.loader import RuleSet
    from engine.observability import Observability
    from handlers.registry import HandlerRegistry

__all__ = ["BackendProbe", "handler_checks", "pubsub_check"]

log = structlog.get_logger(__name__)

# A check raises when its backend does not answer.
Check = Callable[[], None]

# Seconds between two rounds of checks, and allowed for Pub/Sub's answer.
CHECK_INTERVAL = 10.0
_PUBSUB_TIMEOUT = 5.0
_NOT_READY = "{backend} does not answer: {error}"


class BackendProbe:
    """Run health checks every `interval` seconds; report the failing ones.

    Args:
        checks: a check by backend name, as `/readyz` names it.
        observability: told which backends fail, when served.
        interval: seconds between two rounds of checks.
    """

    def __init__(
        self,
        checks: Mapping[str, Check],
        observability: Observability | None = None,
        interval: float = CHECK_INTERVAL,
    ) -> None:
        self.checks = dict(checks)
        self.observability = observability
        self.interval = interval
        self._failing: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def failing(self) -> dict[str, str]:
        """Return the reason of each backend whose last check failed."""
        with self._lock:
            return dict(self._failing)

    def start(self) -> None:
        """Check once now, then every `interval` seconds in a thread."""
        self.check_all()
        self._thread = threading.Thread(
            target=self._run, name="backend-probe", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop checking."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def check_all(self) -> None:
        """Run every check once, on the caller's thread."""
        for name in self.checks:
            self.confirm(name)

    def confirm(self, name: str) -> bool:
        """Run one check now; tell whether its backend answers.

        A name without a check answers.
        """
        check = self.checks.get(name)
        if check is None:
            return True
        try:
            check()
        except Exception as error:  # a plug-in backend may raise anything
            self._mark(name, _NOT_READY.format(backend=name, error=error))
            return False
        self._mark(name, None)
        return True

    def _mark(self, name: str, reason: str | None) -> None:
        with self._lock:
            before = self._failing.get(name)
            if reason is None:
                self._failing.pop(name, None)
            else:
                self._failing[name] = reason
        if reason is not None and before is None:
            log.error("backend unavailable", backend=name, error=reason)
        elif reason is None and before is not None:
            log.info("backend available again", backend=name)
        if self.observability is not None:
            self.observability.set_backend(name, ok=reason is None, reason=reason or "")

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            self.check_all()


def handler_checks(registry: HandlerRegistry, ruleset: RuleSet) -> dict[str, Check]:
    """Return the `ping` of each backend of the handlers the rules use.

    A backend is any attribute of a handler instance that has a `ping`
    method, such as the `RedisCacheBackend` of `invalidate_cache`. The
    handlers are those of the rules at start; rules that a reload adds
    are not checked.
    """
    names = sorted({a.action for rule in ruleset.rules for a in rule.spec.actions})
    checks: dict[str, Check] = {}
    for name in names:
        try:
            handler = registry.get(name)
        except HandlerNotFound:
            continue
        for attribute, value in vars(handler).items():
            ping = getattr(value, "ping", None)
            if callable(ping):
                label = f"The {attribute.lstrip('_')} of the {name} handler"
                checks[label] = ping
    return checks


def pubsub_check(subscription_path: str) -> tuple[Check, Callable[[], None]]:
    """Return a check that describes the subscription, and what closes it.

    Pub/Sub answers a description at once, messages or not, so a timeout
    here means that Pub/Sub itself does not answer.
    """
    from google.cloud.pubsub_v1 import SubscriberClient

    client: Any = SubscriberClient()

    def describe() -> None:
        client.get_subscription(
            subscription=subscription_path, timeout=_PUBSUB_TIMEOUT, retry=None
        )

    return describe, client.close

"""Tests of the backend probe: readiness follows the backends that answer."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from engine.health_probe import BackendProbe, handler_checks, pubsub_check
from engine.loader import load_rules
from engine.observability import Observability
from handlers.cache import InvalidateCacheHandler
from handlers.registry import HandlerRegistry
from infra.redis_cache import RedisCacheBackend

RULES = Path(__file__).parents[2] / "rules"
CACHE_BACKEND = "The backend of the invalidate_cache handler"


class FlakyCheck:
    """A check that fails while `down` is set."""

    def __init__(self) -> None:
        self.down = False

    def __call__(self) -> None:
        if self.down:
            raise ConnectionError("Connection refused.")


@pytest.fixture
def unused_port() -> int:
    """Return a loopback port where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.usefixtures("all_log_levels")
def test_readiness_follows_a_backend_down_and_back() -> None:
    """/readyz fails with the check's reason, and logs each change once."""
    observability = Observability()
    observability.set_ready(True)
    check = FlakyCheck()
    probe = BackendProbe({"Cache": check}, observability)
    seen = []

    with capture_logs() as logs:
        probe.check_all()
        seen.append(observability.readiness())
        check.down = True
        probe.check_all()
        probe.check_all()
        seen.append(observability.readiness())
        check.down = False
        probe.check_all()
        seen.append(observability.readiness())

    assert seen == [
        {"ready": True, "reason": ""},
        {"ready": False, "reason": "Cache does not answer: Connection refused."},
        {"ready": True, "reason": ""},
    ]
    assert [(log["event"], log["backend"]) for log in logs] == [
        ("backend unavailable", "Cache"),
        ("backend available again", "Cache"),
    ]


def test_the_probe_checks_again_on_its_own() -> None:
    """Started, the probe checks every interval without being asked."""
    check = FlakyCheck()
    probe = BackendProbe({"Cache": check}, interval=0.05)
    probe.start()
    check.down = True
    time.sleep(0.3)
    failing = probe.failing
    probe.close()

    assert failing == {"Cache": "Cache does not answer: Connection refused."}


@pytest.mark.parametrize(
    ("reachable", "reason_start"),
    [
        (True, None),
        (False, f"{CACHE_BACKEND} does not answer: Redis at redis://127.0.0.1:"),
    ],
    ids=["redis answers", "redis unreachable"],
)
def test_the_redis_of_invalidate_cache_is_checked(
    redis_url: str, unused_port: int, reachable: bool, reason_start: str | None
) -> None:
    """The rules use invalidate_cache, so its Redis decides readiness too."""
    url = redis_url.rsplit("/", 1)[0] + "/9"
    if not reachable:
        url = f"redis://127.0.0.1:{unused_port}/9"
    backend = RedisCacheBackend(url, timeout=1)
    registry = HandlerRegistry()
    registry.register(InvalidateCacheHandler, InvalidateCacheHandler(backend))
    checks = handler_checks(registry, load_rules(RULES))
    probe = BackendProbe(checks)

    answered = probe.confirm(CACHE_BACKEND)
    reason = probe.failing.get(CACHE_BACKEND)
    backend.close()

    assert list(checks) == [CACHE_BACKEND]
    assert answered is reachable
    if reason_start is None:
        assert reason is None
    else:
        assert reason is not None and reason.startswith(reason_start)


def test_a_pubsub_that_never_answers_is_not_taken_for_a_quiet_one(
    silent_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Describing the subscription times out, where a pull would return nothing."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", silent_server)
    describe, close = pubsub_check("projects/test/subscriptions/engine")
    probe = BackendProbe({"Pub/Sub": describe})

    started = time.monotonic()
    answered = probe.confirm("Pub/Sub")
    seconds = time.monotonic() - started
    close()

    assert answered is False
    assert probe.failing["Pub/Sub"].startswith("Pub/Sub does not answer: 504")
    assert 4 < seconds < 10

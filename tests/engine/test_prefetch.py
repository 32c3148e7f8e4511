"""Tests of the prefetcher's pulling threads, on a scripted subscription."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from engine import prefetch
from engine.prefetch import Prefetcher
from infra.pubsub import PubSubSource, ReceivedMessage, TransientSourceError


class ScriptedSource(PubSubSource):
    """A subscription whose pulls fail as scripted, then return nothing."""

    def __init__(self, failures: list[str]) -> None:
        super().__init__("test", "engine")
        self.failures = failures
        self.pulls = 0

    def pull(self, max_messages: int = 1000, timeout: float = 10.0) -> Any:
        self.pulls += 1
        if self.failures:
            raise TransientSourceError(self.failures.pop(0))
        time.sleep(0.01)
        return list[ReceivedMessage]()


def _wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_failing_pull_is_reported_until_one_succeeds(
    pubsub_emulator_host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pull_error` holds the last failure, and clears once a pull answers."""
    monkeypatch.setattr(prefetch, "_BACKOFF_SECONDS", 0.2)
    source = ScriptedSource(["Pub/Sub is unavailable (503)."])
    prefetcher = Prefetcher(source, pull_timeout=0.1)
    seen = []

    prefetcher.start()
    _wait_until(lambda: prefetcher.pull_error is not None)
    seen.append(prefetcher.pull_error)
    _wait_until(lambda: prefetcher.pull_error is None)
    seen.append(prefetcher.pull_error)
    prefetcher.stop()
    source.close()

    assert seen == ["Pub/Sub is unavailable (503).", None]

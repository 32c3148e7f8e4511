"""Fixtures shared by the observability, status page and rule watcher tests."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
import structlog

from engine.engine import Engine
from engine.errors import EventRejected
from engine.events import parse_event_line
from engine.observability import Observability

OBSERVABILITY_FIXTURES = Path(__file__).parents[1] / "fixtures" / "observability"

Feed = Callable[[Engine, Observability, Iterable[bytes]], None]


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def all_log_levels() -> Iterator[None]:
    """Let every log level through, whatever an earlier test configured.

    The command line configures structlog for the whole process, and its
    tests run commands whose default level drops info lines.
    """
    saved = structlog.get_config()
    structlog.reset_defaults()
    yield
    structlog.configure(**saved)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def feed() -> Feed:
    """Return a function that replays lines as the worker would, observed."""

    def feed_lines(
        engine: Engine, observability: Observability, lines: Iterable[bytes]
    ) -> None:
        for line in lines:
            try:
                event = parse_event_line(line)
            except EventRejected as rejection:
                observability.record_event("rejected", rejection.reason)
                continue
            duplicates = engine.stats.duplicates
            engine.process(event)
            seen_before = engine.stats.duplicates > duplicates
            observability.record_event("duplicate" if seen_before else "accepted")
        observability.record_batch(engine, 0.25)

    return feed_lines


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Return `host:port` of a server that accepts and never answers.

    That is what a paused (SIGSTOPped) emulator looks like to a client:
    the kernel completes the connection, and nothing ever comes back.
    """
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held: list[socket.socket] = []
    stopped = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stopped.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stopped.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()

"""Session fixtures that point tests at local Pub/Sub, Firestore and Redis.

`make test` starts the backends once and exports their addresses, which the
fixtures take as they are. Run without them, pytest starts what a test asks
for through `running_emulators`, once per session, and stops it at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Collection, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from infra.emulators import running_emulators

ROOT = Path(__file__).resolve().parent.parent

_VARIABLES = {
    "pubsub": "PUBSUB_EMULATOR_HOST",
    "firestore": "FIRESTORE_EMULATOR_HOST",
    "redis": "REDIS_URL",
}


class _Backends:
    """Find each backend in the environment, or start it on first request."""

    def __init__(self, stack: ExitStack) -> None:
        self._stack = stack

    def address(self, variable: str, services: Collection[str]) -> str:
        value = os.environ.get(variable)
        if value:
            return value

        # Only what the environment lacks, so that exported hosts stay in use.
        missing = [name for name in services if not os.environ.get(_VARIABLES[name])]
        endpoints = self._stack.enter_context(running_emulators(services=missing))
        # The Google clients read their emulator hosts from the environment.
        for name, address in endpoints.environ().items():
            self._stack.callback(_restore, name, os.environ.get(name))
            os.environ[name] = address
        return os.environ[variable]


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@pytest.fixture(scope="session")
def _backends() -> Iterator[_Backends]:
    with ExitStack() as stack:
        yield _Backends(stack)


@pytest.fixture(scope="session")
def pubsub_emulator_host(_backends: _Backends) -> str:
    """Return `host:port` of a Pub/Sub emulator, also set in the environment."""
    # Both Java emulators start together: they start in parallel, and a
    # session that needs one usually needs the other.
    return _backends.address("PUBSUB_EMULATOR_HOST", ("pubsub", "firestore"))


@pytest.fixture(scope="session")
def firestore_emulator_host(_backends: _Backends) -> str:
    """Return `host:port` of a Firestore emulator, also set in the environment."""
    return _backends.address("FIRESTORE_EMULATOR_HOST", ("pubsub", "firestore"))


@pytest.fixture(scope="session")
def redis_url(_backends: _Backends) -> str:
    """Return the URL of a Redis server on the loopback interface."""
    return _backends.address("REDIS_URL", ("redis",))


@pytest.fixture
def project_id() -> str:
    """Return a project id of its own, so that tests never share resources."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def demo_stream_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the real demo stream once per session and return its path."""
    from engine.demo_stream import build_demo_stream

    path = tmp_path_factory.mktemp("demo") / "demo-events.jsonl.gz"
    build_demo_stream(path, ROOT / "data" / "nab")
    return path


@pytest.fixture(scope="session")
def demo_replay(
    demo_stream_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    """Replay the demo stream through the shipped rules once per session."""
    from engine.loader import load_rules
    from engine.replay import replay_stream

    actions_path = tmp_path_factory.mktemp("demo-replay") / "actions.jsonl"
    with actions_path.open("wb") as actions:
        summary = replay_stream(
            demo_stream_path, load_rules(ROOT / "rules"), actions_out=actions
        )
    return summary, actions_path

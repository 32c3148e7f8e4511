"""Tests of the emulator lifecycle: start, reuse, status and stop."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis

from infra.emulators import (
    EmulatorEndpoints,
    EmulatorError,
    emulator_status,
    start_emulators,
    stop_emulators,
)

_JAVA_SERVICES = ("pubsub", "firestore")


def _state(state_dir: Path) -> dict[str, Any]:
    services: dict[str, Any] = json.loads((state_dir / "state.json").read_text())[
        "services"
    ]
    return services


def _processes_in_groups(groups: set[int]) -> list[str]:
    """List the live processes of the given groups, with their command lines."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) in groups:
            found.append(f"{entry.name} {command.decode(errors='replace')}")
    return found


def _root_page(host: str | None) -> str:
    with urllib.request.urlopen(f"http://{host}/", timeout=2) as reply:
        return str(reply.read().decode().strip())


@pytest.mark.emulator
def test_start_and_stop_leave_no_process_behind(tmp_path: Path) -> None:
    """Stopping ends both emulators' process groups, Java children included."""
    endpoints = start_emulators(tmp_path, _JAVA_SERVICES)
    state = _state(tmp_path)
    groups = {state[name]["pid"] for name in _JAVA_SERVICES}
    running = _processes_in_groups(groups)
    data_dirs = [Path(state[name]["data_dir"]) for name in _JAVA_SERVICES]

    pages = [_root_page(endpoints.pubsub_host), _root_page(endpoints.firestore_host)]
    env_file = (tmp_path / "env").read_text()
    stop_emulators(tmp_path)

    assert pages == ["Ok", "Ok"]
    assert sum(" java " in f" {line}" for line in running) == 2
    assert env_file == (
        f"export PUBSUB_EMULATOR_HOST={endpoints.pubsub_host}\n"
        f"export FIRESTORE_EMULATOR_HOST={endpoints.firestore_host}\n"
    )
    assert _processes_in_groups(groups) == []
    assert [path.exists() for path in data_dirs] == [False, False]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.emulator
def test_second_start_reuses_running_emulators(tmp_path: Path) -> None:
    """A start over a live state returns the same endpoints and processes."""
    try:
        first = start_emulators(tmp_path, ("pubsub",))
        pid = _state(tmp_path)["pubsub"]["pid"]
        second = start_emulators(tmp_path, ("pubsub",))
        status = emulator_status(tmp_path)
    finally:
        stop_emulators(tmp_path)

    assert second == first
    assert status["pubsub"]["pid"] == pid
    assert (status["pubsub"]["alive"], status["pubsub"]["answering"]) == (True, True)
    assert emulator_status(tmp_path) == {}


@pytest.mark.redis
def test_running_redis_is_used_and_left_running(tmp_path: Path, redis_url: str) -> None:
    """Redis already answering on 6379 is recorded as not started, and kept."""
    endpoints = start_emulators(tmp_path, ("redis",))
    record = _state(tmp_path)["redis"]
    stop_emulators(tmp_path)

    assert endpoints == EmulatorEndpoints(
        pubsub_host=None, firestore_host=None, redis_url="redis://127.0.0.1:6379/0"
    )
    assert record == {"started": False, "port": 6379, "url": "redis://127.0.0.1:6379/0"}
    assert emulator_status(tmp_path) == {}
    with redis.Redis.from_url(redis_url) as client:
        assert client.ping() is True


def test_redis_is_started_when_nothing_answers(tmp_path: Path) -> None:
    """With its port free, Redis runs as a child until stopped."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    endpoints = start_emulators(tmp_path, ("redis",), redis_port=port)
    record = _state(tmp_path)["redis"]
    with redis.Redis.from_url(endpoints.redis_url or "") as client:
        answered = client.ping()
    stop_emulators(tmp_path)

    assert endpoints.redis_url == f"redis://127.0.0.1:{port}/0"
    assert (record["started"], answered) == (True, True)
    assert _processes_in_groups({record["pid"]}) == []
    assert Path(record["data_dir"]).exists() is False


def test_unknown_service_is_refused(tmp_path: Path) -> None:
    """Asking for a service the module does not know names the valid ones."""
    with pytest.raises(EmulatorError) as caught:
        start_emulators(tmp_path, ("pubsub", "spanner"))

    assert str(caught.value) == (
        "The services ['spanner'] are unknown; choose from "
        "['pubsub', 'firestore', 'redis']."
    )


def test_stop_without_state_does_nothing(tmp_path: Path) -> None:
    """Stopping where nothing was started is not an error."""
    stop_emulators(tmp_path)

    assert list(tmp_path.iterdir()) == []


@pytest.mark.emulator
def test_command_line_start_and_stop(tmp_path: Path) -> None:
    """The CLI prints the exports, reports status, and stops every process."""

    def run(command: str) -> subprocess.CompletedProcess[str]:
        arguments = [command, "--state-dir", str(tmp_path)]
        return subprocess.run(
            [sys.executable, "-m", "infra.emulators", *arguments],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    try:
        started = run("start")
        state = _state(tmp_path)
        status = run("status")
        stopped = run("stop")
        after = run("status")
    finally:
        # Whatever the CLI left behind if a step above failed.
        stop_emulators(tmp_path)

    groups = {record["pid"] for record in state.values() if record["started"]}
    assert started.returncode == 0, started.stderr
    assert started.stdout.splitlines() == [
        f"export PUBSUB_EMULATOR_HOST={state['pubsub']['host']}",
        f"export FIRESTORE_EMULATOR_HOST={state['firestore']['host']}",
        f"export REDIS_URL={state['redis']['url']}",
    ]
    answering = {k: v["answering"] for k, v in json.loads(status.stdout).items()}
    assert status.returncode == 0
    assert answering == {"pubsub": True, "firestore": True, "redis": True}
    assert (stopped.returncode, after.returncode, after.stdout) == (0, 1, "{}\n")
    assert _processes_in_groups(groups) == []

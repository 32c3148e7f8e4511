"""Local backends for tests and development: Pub/Sub, Firestore and Redis.

`start_emulators` launches the gcloud Pub/Sub and Firestore emulators on free
loopback ports, each as its own process group, so that `stop_emulators` ends
the gcloud wrapper and its Java child together. Redis is started only when
nothing answers on 127.0.0.1:6379. The state directory records what was
started (`state.json`) and holds an `env` file for a shell to source::

    python -m infra.emulators start|stop|status [--state-dir DIR]

Process groups are found through /proc, so stopping works on Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Collection, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from engine.errors import EngineError

__all__ = [
    "ALL_SERVICES",
    "DEFAULT_STATE_DIR",
    "EmulatorEndpoints",
    "EmulatorError",
    "emulator_status",
    "main",
    "running_emulators",
    "start_emulators",
    "stop_emulators",
]

ALL_SERVICES = ("pubsub", "firestore", "redis")
DEFAULT_STATE_DIR = Path(".emulators")
LOOPBACK = "127.0.0.1"
REDIS_PORT = 6379

_STATE_FILE = "state.json"
_ENV_FILE = "env"
_START_TIMEOUT = 90.0
_STOP_TIMEOUT = 10.0
_POLL_INTERVAL = 0.2

# The gcloud commands per emulator; "{host_port}" and "{data_dir}" are filled in.
_GCLOUD_COMMANDS = {
    "pubsub": (
        "gcloud",
        "beta",
        "emulators",
        "pubsub",
        "start",
        "--host-port={host_port}",
        "--data-dir={data_dir}",
    ),
    "firestore": (
        "gcloud",
        "emulators",
        "firestore",
        "start",
        "--host-port={host_port}",
    ),
}

# 1. A private gcloud configuration per emulator keeps parallel runs from
#    racing on the shared emulators/*/env.yaml files of the user's config.
# 2. The other settings stop gcloud from prompting, probing the GCE metadata
#    server or checking for updates: the emulators need no network at all.
_GCLOUD_ENVIRONMENT = {
    "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
    "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false",
    "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "true",
    "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "true",
}

log = structlog.get_logger(__name__)

# Children started by this process, kept so that `stop_emulators` can reap
# them; otherwise each stopped leader would linger as a zombie.
_children: dict[int, subprocess.Popen[bytes]] = {}


class EmulatorError(EngineError):
    """An emulator or Redis did not start, answer or stop as expected."""


@dataclass(frozen=True)
class EmulatorEndpoints:
    """Where the running backends answer; None for a service not asked for."""

    pubsub_host: str | None
    firestore_host: str | None
    redis_url: str | None

    def environ(self) -> dict[str, str]:
        """Return the environment variables that point clients at the backends."""
        names = {
            "PUBSUB_EMULATOR_HOST": self.pubsub_host,
            "FIRESTORE_EMULATOR_HOST": self.firestore_host,
            "REDIS_URL": self.redis_url,
        }
        return {name: value for name, value in names.items() if value is not None}


def start_emulators(
    state_dir: Path = DEFAULT_STATE_DIR,
    services: Collection[str] = ALL_SERVICES,
    *,
    redis_port: int = REDIS_PORT,
) -> EmulatorEndpoints:
    """Start the requested backends and record them in `state_dir`.

    Backends recorded by an earlier `start` that still answer are reused;
    a stale record is cleaned up first.

    Args:
        state_dir: where to write `state.json` and the `env` file.
        services: any of "pubsub", "firestore" and "redis".
        redis_port: the loopback port where Redis is used, or started if
            nothing answers there.

    Raises:
        EmulatorError: a backend did not answer within its start timeout.
    """
    unknown = set(services) - set(ALL_SERVICES)
    if unknown:
        raise EmulatorError(
            f"The services {sorted(unknown)} are unknown; "
            f"choose from {list(ALL_SERVICES)}."
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    previous = _read_state(state_dir)
    if previous is not None:
        same_redis = previous.get("redis", {}).get("port", redis_port) == redis_port
        if set(previous) == set(services) and same_redis and _all_answering(previous):
            log.info("emulators already running", state_dir=str(state_dir))
            return _endpoints(previous)
        stop_emulators(state_dir)

    # Launch both Java emulators before waiting, so their start-ups overlap.
    java_services = [name for name in ("pubsub", "firestore") if name in services]
    ports = _free_ports(len(java_services))
    state: dict[str, dict[str, Any]] = {}
    try:
        for name, port in zip(java_services, ports, strict=True):
            state[name] = _launch_gcloud_emulator(name, port)
            _write_state(state_dir, state)
        if "redis" in services:
            state["redis"] = _ensure_redis(redis_port)
            _write_state(state_dir, state)
        for name, record in state.items():
            _wait_until_answering(name, record)
    except BaseException:
        # Ctrl-C and failures alike must not leave half a set running.
        stop_emulators(state_dir)
        raise

    _write_env_file(state_dir, _endpoints(state))
    return _endpoints(state)


def stop_emulators(state_dir: Path = DEFAULT_STATE_DIR) -> None:
    """Stop every process group recorded in `state_dir` and forget them.

    Redis found already running is left alone.

    Raises:
        EmulatorError: a process group survived SIGKILL.
    """
    state = _read_state(state_dir)
    if state is None:
        return
    failures = []
    for name, record in state.items():
        try:
            if record["started"]:
                _stop_group(name, record)
        except EmulatorError as error:
            # Keep going: one stubborn group must not keep the others alive.
            failures.append(str(error))
            continue
        data_dir = record.get("data_dir")
        if data_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
    if failures:
        raise EmulatorError(" ".join(failures))

    (state_dir / _STATE_FILE).unlink(missing_ok=True)
    (state_dir / _ENV_FILE).unlink(missing_ok=True)


def emulator_status(state_dir: Path = DEFAULT_STATE_DIR) -> dict[str, Any]:
    """Return, per recorded service, its record plus `alive` and `answering`."""
    state = _read_state(state_dir) or {}
    status: dict[str, Any] = {}
    for name, record in state.items():
        alive = bool(_group_members(record["pid"])) if record["started"] else None
        status[name] = {**record, "alive": alive, "answering": _answers(record)}
    return status


@contextmanager
def running_emulators(
    state_dir: Path | None = None,
    services: Collection[str] = ALL_SERVICES,
    *,
    redis_port: int = REDIS_PORT,
) -> Iterator[EmulatorEndpoints]:
    """Run the requested backends for the duration of a `with` block.

    Without `state_dir`, the state lives in a temporary directory.
    """
    with tempfile.TemporaryDirectory(prefix="emulators-") as scratch:
        directory = state_dir if state_dir is not None else Path(scratch)
        endpoints = start_emulators(directory, services, redis_port=redis_port)
        try:
            yield endpoints
        finally:
            stop_emulators(directory)


# Starting


def _launch_gcloud_emulator(name: str, port: int) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix=f"{name}-emulator-"))
    gcloud_config = data_dir / "gcloud-config"
    gcloud_config.mkdir()
    (data_dir / "data").mkdir()
    host_port = f"{LOOPBACK}:{port}"
    command = [
        part.format(host_port=host_port, data_dir=data_dir / "data")
        for part in _GCLOUD_COMMANDS[name]
    ]
    environment = {
        **os.environ,
        **_GCLOUD_ENVIRONMENT,
        "CLOUDSDK_CONFIG": str(gcloud_config),
    }
    log_path = data_dir / "emulator.log"
    process = _spawn_group(command, log_path, environment)
    log.info("backend launched", service=name, pid=process.pid, port=port)
    return {
        "started": True,
        "pid": process.pid,
        "start_time": _process_start_time(process.pid),
        "port": port,
        "host": host_port,
        "data_dir": str(data_dir),
        "log": str(log_path),
    }


def _ensure_redis(port: int) -> dict[str, Any]:
    url = f"redis://{LOOPBACK}:{port}/0"
    if _redis_answers(port):
        log.info("backend already answering", service="redis", port=port)
        return {"started": False, "port": port, "url": url}

    data_dir = Path(tempfile.mkdtemp(prefix="redis-"))
    log_path = data_dir / "redis.log"
    command = [
        "redis-server",
        "--bind",
        LOOPBACK,
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(data_dir),
    ]
    process = _spawn_group(command, log_path, dict(os.environ))
    log.info("backend launched", service="redis", pid=process.pid, port=port)
    return {
        "started": True,
        "pid": process.pid,
        "start_time": _process_start_time(process.pid),
        "port": port,
        "url": url,
        "data_dir": str(data_dir),
        "log": str(log_path),
    }


def _spawn_group(
    command: list[str], log_path: Path, environment: dict[str, str]
) -> subprocess.Popen[bytes]:
    # A new session makes the child the leader of its own process group, so
    # one killpg reaches its descendants, and a Ctrl-C on the terminal does not.
    try:
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,
            )
    except OSError as error:
        raise EmulatorError(
            f"Cannot run {command[0]!r}: {error.strerror}; is it installed?"
        ) from error
    _children[process.pid] = process
    return process


def _wait_until_answering(name: str, record: dict[str, Any]) -> None:
    started_at = time.monotonic()
    deadline = started_at + _START_TIMEOUT
    while time.monotonic() < deadline:
        if _answers(record):
            seconds = round(time.monotonic() - started_at, 2)
            log.info(
                "backend answering", service=name, port=record["port"], seconds=seconds
            )
            return
        if record["started"] and not _group_members(record["pid"]):
            raise EmulatorError(
                f"The {name} emulator exited during start-up; "
                f"its log ends with: {_log_tail(record)}"
            )
        time.sleep(_POLL_INTERVAL)
    raise EmulatorError(
        f"The {name} emulator did not answer on port {record['port']} within "
        f"{_START_TIMEOUT:.0f} seconds; its log ends with: {_log_tail(record)}"
    )


def _free_ports(count: int) -> list[int]:
    # All probes stay open until every port is known, so the ports differ.
    # A port is free now; another process may take it before the emulator
    # binds it, in which case the start-up fails loudly rather than silently.
    with ExitStack() as stack:
        probes = [
            stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            for _ in range(count)
        ]
        for probe in probes:
            probe.bind((LOOPBACK, 0))
        return [int(probe.getsockname()[1]) for probe in probes]


# Probing


def _answers(record: dict[str, Any]) -> bool:
    if "url" in record:
        return _redis_answers(record["port"])
    return _http_answers(record["port"])


def _http_answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/", timeout=1) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _all_answering(state: dict[str, dict[str, Any]]) -> bool:
    return all(_answers(record) for record in state.values())


# Stopping


def _stop_group(name: str, record: dict[str, Any]) -> None:
    pgid: int = record["pid"]
    leader_start = _process_start_time(pgid)
    if leader_start is not None and leader_start != record["start_time"]:
        # The leader's pid now belongs to an unrelated process; its group
        # cannot be ours, because a group id stays taken while it has members.
        log.warning("backend pid reused", service=name, pid=pgid)
        return

    for sig, wait in ((signal.SIGTERM, _STOP_TIMEOUT), (signal.SIGKILL, 5.0)):
        if not _group_members(pgid):
            break
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        _wait_for_empty_group(pgid, wait)

    child = _children.pop(pgid, None)
    if child is not None:
        child.wait(timeout=5)
    survivors = _group_members(pgid)
    if survivors:
        raise EmulatorError(
            f"The {name} process group {pgid} survived SIGKILL; "
            f"processes {survivors} are still running."
        )
    log.info("backend stopped", service=name, pid=pgid)


def _wait_for_empty_group(pgid: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and _group_members(pgid):
        time.sleep(0.1)


def _group_members(pgid: int) -> list[int]:
    """List the live (non-zombie) processes in a process group."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        # After the command name: state is field 3 and pgrp field 5 of stat(5).
        if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _process_start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    # starttime is field 22 of stat(5), in clock ticks since boot.
    return int(fields[19]) if fields is not None else None


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses; it ends at the last ")".
    return text[text.rindex(")") + 2 :].split()


def _log_tail(record: dict[str, Any], lines: int = 5) -> str:
    try:
        text = Path(record["log"]).read_text(errors="replace")
    except (KeyError, OSError):
        return "(no log)"
    return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"


# State and env files


def _read_state(state_dir: Path) -> dict[str, dict[str, Any]] | None:
    path = state_dir / _STATE_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        state: dict[str, dict[str, Any]] = json.loads(text)["services"]
    except (ValueError, KeyError, TypeError) as error:
        raise EmulatorError(
            f"The emulator state file {path} is unreadable; stop any emulators "
            "it named by hand and delete it."
        ) from error
    return state


def _write_state(state_dir: Path, state: dict[str, dict[str, Any]]) -> None:
    path = state_dir / _STATE_FILE
    # Write and rename, so that a `stop` racing with a `start` never reads
    # half a file.
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps({"services": state}, indent=2) + "\n")
    partial.replace(path)


def _write_env_file(state_dir: Path, endpoints: EmulatorEndpoints) -> None:
    lines = [f"export {name}={value}\n" for name, value in endpoints.environ().items()]
    (state_dir / _ENV_FILE).write_text("".join(lines))


def _endpoints(state: dict[str, dict[str, Any]]) -> EmulatorEndpoints:
    return EmulatorEndpoints(
        pubsub_host=state["pubsub"]["host"] if "pubsub" in state else None,
        firestore_host=state["firestore"]["host"] if "firestore" in state else None,
        redis_url=state["redis"]["url"] if "redis" in state else None,
    )


# Command line


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `start`, `stop` or `status` command and return the exit status."""
    from engine.logging import configure_logging

    parser = argparse.ArgumentParser(
        prog="python -m infra.emulators",
        description="Start or stop the local Pub/Sub, Firestore and Redis backends.",
    )
    parser.add_argument("command", choices=("start", "stop", "status"))
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="directory for state.json and the env file (default: .emulators)",
    )
    args = parser.parse_args(argv)
    configure_logging()

    try:
        if args.command == "start":
            endpoints = start_emulators(args.state_dir)
            for name, value in endpoints.environ().items():
                print(f"export {name}={value}")
            return 0
        if args.command == "stop":
            stop_emulators(args.state_dir)
            return 0
        status = emulator_status(args.state_dir)
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    print(json.dumps(status, indent=2))
    running = bool(status) and all(entry["answering"] for entry in status.values())
    return 0 if running else 1


if __name__ == "__main__":
    sys.exit(main())

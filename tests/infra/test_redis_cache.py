"""Tests of Redis cache invalidation against a real Redis server."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from engine.errors import TransientHandlerError
from handlers.cache_keys import escape_glob
from infra.redis_cache import RedisCacheBackend

pytestmark = pytest.mark.redis

PATTERNS = yaml.safe_load(
    (Path(__file__).parents[1] / "fixtures" / "cache" / "patterns.yaml").read_text()
)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """Return a plain client for setting up and checking keys."""
    with redis.Redis.from_url(redis_url, decode_responses=True) as plain:
        yield plain


@pytest.fixture
def prefix(client: redis.Redis) -> Iterator[str]:
    """Return a key prefix of this test's own; remove its keys afterwards."""
    prefix = f"test:{uuid.uuid4().hex}:"
    yield prefix
    leftovers = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if leftovers:
        client.unlink(*leftovers)


@pytest.fixture
def backend(redis_url: str) -> Iterator[RedisCacheBackend]:
    with RedisCacheBackend(redis_url) as cache:
        yield cache


def _command_calls(client: redis.Redis, command: str) -> int:
    stats = client.info("commandstats").get(f"cmdstat_{command}", {})
    return int(stats.get("calls", 0))


def test_exact_key_is_removed_alone(
    client: redis.Redis, prefix: str, backend: RedisCacheBackend
) -> None:
    """An exact key removes that key only, and nothing the second time."""
    client.mset({f"{prefix}user:1": "a", f"{prefix}user:10": "b"})

    first = backend.invalidate(f"{prefix}user:1")
    second = backend.invalidate(f"{prefix}user:1")

    assert (first, second) == (1, 0)
    assert client.exists(f"{prefix}user:1") == 0
    assert client.get(f"{prefix}user:10") == "b"


def test_pattern_removes_every_match_and_nothing_else(
    client: redis.Redis, prefix: str, backend: RedisCacheBackend
) -> None:
    """A pattern over 5,000 keys removes them all with SCAN, never KEYS."""
    matching = {f"{prefix}user:{n}:profile": "x" for n in range(5000)}
    others = {f"{prefix}project:{n}:profile": "y" for n in range(300)}
    others[f"{prefix}user-archive"] = "z"
    client.mset({**matching, **others})
    keys_calls = _command_calls(client, "keys")
    scan_calls = _command_calls(client, "scan")

    removed = backend.invalidate(f"{prefix}user:*")

    assert removed == 5000
    assert list(client.scan_iter(match=f"{prefix}user:*", count=1000)) == []
    assert set(client.scan_iter(match=f"{prefix}*", count=1000)) == set(others)
    assert _command_calls(client, "keys") == keys_calls
    assert _command_calls(client, "scan") > scan_calls


@pytest.mark.parametrize(
    ("pattern", "expected_left"),
    [
        ("user:?", ["user:10", "user:x1"]),
        ("user:[12]*", ["user:x1"]),
        ("user:[^1]", ["user:1", "user:10", "user:x1"]),
        ("nobody:*", ["user:1", "user:10", "user:2", "user:x1"]),
    ],
    ids=["question mark", "brackets", "negated brackets", "no match"],
)
def test_glob_patterns_follow_redis_matching(
    client: redis.Redis,
    prefix: str,
    backend: RedisCacheBackend,
    pattern: str,
    expected_left: list[str],
) -> None:
    """`?` and `[...]` make a target a pattern, matched as Redis matches it."""
    names = ["user:1", "user:2", "user:10", "user:x1"]
    client.mset({f"{prefix}{name}": "v" for name in names})

    removed = backend.invalidate(f"{prefix}{pattern}")

    # SCAN may return a key more than once, so the keys left are a set.
    left = sorted({k.removeprefix(prefix) for k in client.scan_iter(f"{prefix}*")})
    assert left == expected_left
    assert removed == len(names) - len(expected_left)


@pytest.mark.parametrize("case", PATTERNS["cases"], ids=lambda case: case["name"])
def test_redis_matches_the_keys_the_in_process_cache_matches(
    client: redis.Redis, prefix: str, case: dict[str, Any]
) -> None:
    """The glob table the in-process cache follows is the one Redis follows."""
    client.mset({f"{prefix}{key}": "v" for key in PATTERNS["keys"]})

    found = {
        key.removeprefix(prefix)
        for key in client.scan_iter(match=f"{prefix}{case['pattern']}", count=1000)
    }

    assert sorted(found) == sorted(case["matches"])


@pytest.mark.parametrize(
    ("key", "others"),
    [
        ("user:*", ["user:1", "user:2"]),
        ("user:?", ["user:1", "user:22"]),
        ("project:prj-[12]", ["project:prj-1", "project:prj-2"]),
        ("path:a\\b", ["path:ab", "path:a\\\\b"]),
    ],
    ids=["star", "question mark", "brackets", "backslash"],
)
def test_an_escaped_target_removes_the_key_it_spells_alone(
    client: redis.Redis,
    prefix: str,
    backend: RedisCacheBackend,
    monkeypatch: pytest.MonkeyPatch,
    key: str,
    others: list[str],
) -> None:
    """Escaped, a key holding glob characters is one exact key: no SCAN."""
    client.mset({f"{prefix}{name}": "v" for name in [key, *others]})
    # Spied on this backend's own client: the server's command counts are
    # shared with every other client of the server.
    scans: list[Any] = []
    monkeypatch.setattr(backend._client, "scan", lambda *a, **k: scans.append(a))

    removed = backend.invalidate(escape_glob(f"{prefix}{key}"))

    assert scans == []
    left = sorted({k.removeprefix(prefix) for k in client.scan_iter(f"{prefix}*")})
    assert removed == 1
    assert left == sorted(others)


def test_ping_succeeds_on_a_live_server(backend: RedisCacheBackend) -> None:
    """A ping to a running server returns without raising."""
    backend.ping()


def test_unreachable_redis_is_a_transient_handler_error() -> None:
    """With nothing listening, invalidation fails in a way worth retrying."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    with (
        RedisCacheBackend(f"redis://127.0.0.1:{port}/3", timeout=1) as backend,
        pytest.raises(TransientHandlerError) as caught,
    ):
        backend.invalidate("user:*")

    assert str(caught.value).startswith(
        f"Redis at redis://127.0.0.1:{port}/3 did not answer while invalidating "
        "'user:*': "
    )

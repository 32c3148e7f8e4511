"""Tests of the status page as a browser renders it, in headless Chromium.

`make test` installs Chromium first and sets RULES_ENGINE_REQUIRE_BROWSER,
so there a missing browser fails these tests instead of skipping them.
CHROMIUM names another browser binary.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.engine import Engine
from engine.loader import RuleSet, load_rules
from engine.observability import Observability
from engine.status_server import StatusServer
from tests.engine.conftest import OBSERVABILITY_FIXTURES, Feed

# Flags for a browser that reaches nothing but the page under test.
_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def chromium() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        message = "Chromium is not installed; `make test` installs it."
        if os.environ.get("RULES_ENGINE_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def shop_rules() -> RuleSet:
    return load_rules(OBSERVABILITY_FIXTURES / "rules")


@pytest.fixture(scope="module")
def observability(shop_rules: RuleSet, feed: Feed) -> Observability:
    """A running engine's view: the orders replayed, ready, rules current."""
    observability = Observability()
    observability.set_rules(shop_rules)
    engine = Engine(shop_rules, on_action=observability.record_action)
    lines = (OBSERVABILITY_FIXTURES / "orders.jsonl").read_bytes().splitlines()
    feed(engine, observability, lines)
    engine.close()
    observability.set_backlog(42)
    observability.set_ready(True)
    return observability


@pytest.fixture(scope="module")
def server(observability: Observability) -> Iterator[StatusServer]:
    with StatusServer(observability) as server:
        yield server


def run_chromium(chromium: str, tmp_path: Path, *arguments: str) -> str:
    """Run headless Chromium with a fresh profile; return its standard output."""
    profile = tmp_path / "profile"
    profile.mkdir()
    done = subprocess.run(
        [chromium, *_FLAGS, f"--user-data-dir={profile}", *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


def test_the_rendered_page_shows_tier_actions_and_rules_version(
    chromium: str,
    server: StatusServer,
    observability: Observability,
    shop_rules: RuleSet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The DOM after the script's first refresh holds the server's data."""
    calls = 0
    status = observability.status

    def counted_status() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return status()

    monkeypatch.setattr(observability, "status", counted_status)
    # Virtual time lets the two-second refresh run, so the DOM checked is
    # the one the script drew from /status.json, not only the server's.
    dom = run_chromium(
        chromium, tmp_path, "--virtual-time-budget=5000", "--dump-dom", server.url
    )

    assert '<p id="tier-name" class="tier">growth</p>' in dom
    assert (
        "count over 1h above 5; value seen 6; 6 events; rules version "
        f"{shop_rules.version}"
    ) in dom
    assert f'<code id="rules-version">{shop_rules.version}</code>' in dom
    assert '<th>backlog</th><td class="num">42</td>' in dom
    # One call for the page, then at least one for the script's refresh.
    assert calls >= 2
    # The script shows this badge only when a refresh failed.
    assert '<span id="offline" class="badge bad" hidden="">' in dom


def test_a_screenshot_of_the_page_is_a_png_of_the_window_size(
    chromium: str, server: StatusServer, tmp_path: Path
) -> None:
    """The page renders to an image at the requested size."""
    picture = tmp_path / "status.png"

    run_chromium(
        chromium,
        tmp_path,
        "--window-size=1280,1400",
        f"--screenshot={picture}",
        server.url,
    )

    data = picture.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 1400)

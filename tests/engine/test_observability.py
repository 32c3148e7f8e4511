"""Tests of the engine's metrics, health, readiness and status endpoints."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from engine.actions import ActionRecord, Explanation
from engine.engine import Engine
from engine.loader import LoadedRule, RuleSet, load_rules
from engine.observability import LIVENESS_TIMEOUT, Observability, RateRing
from engine.status_server import StatusServer
from tests.engine.conftest import OBSERVABILITY_FIXTURES, FakeClock, Feed

RULES = OBSERVABILITY_FIXTURES / "rules"
ORDERS = OBSERVABILITY_FIXTURES / "orders.jsonl"


@pytest.fixture(scope="module")
def shop_rules() -> RuleSet:
    return load_rules(RULES)


@pytest.fixture
def observability(clock: FakeClock, shop_rules: RuleSet) -> Observability:
    observability = Observability(clock=clock)
    observability.set_rules(shop_rules)
    return observability


@pytest.fixture
def replayed(
    observability: Observability, shop_rules: RuleSet, feed: Feed
) -> Iterator[Engine]:
    """Replay the orders fixture through an engine that reports its actions."""
    engine = Engine(shop_rules, on_action=observability.record_action)
    feed(engine, observability, ORDERS.read_bytes().splitlines())
    yield engine
    engine.close()


@pytest.fixture
def server(observability: Observability) -> Iterator[StatusServer]:
    with StatusServer(observability) as server:
        yield server


def fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    """Return the status, headers and body of a GET, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def fetch_json(url: str) -> tuple[int, Any]:
    status, _, body = fetch(url)
    return status, json.loads(body)


def metric_lines(text: bytes) -> set[str]:
    return {line for line in text.decode().splitlines() if not line.startswith("#")}


# Metrics


@pytest.mark.usefixtures("replayed")
def test_metrics_count_events_fires_and_actions_of_a_replay(
    server: StatusServer, shop_rules: RuleSet
) -> None:
    """The orders fixture: 8 received, 1 rejected, 1 duplicate, 2 fires."""
    status, headers, body = fetch(f"{server.url}/metrics")

    assert status == 200
    assert headers["Content-Type"] == CONTENT_TYPE_LATEST
    expected = {
        "rules_engine_events_received_total 8.0",
        "rules_engine_events_accepted_total 7.0",
        'rules_engine_events_rejected_total{reason="invalid_json"} 1.0',
        "rules_engine_duplicates_total 1.0",
        'rules_engine_rule_fires_total{rule="order-burst"} 1.0',
        'rules_engine_rule_fires_total{rule="big-order"} 1.0',
        'rules_engine_actions_total{handler="scale",outcome="ok"} 1.0',
        'rules_engine_actions_total{handler="notify",outcome="ok"} 1.0',
        'rules_engine_action_latency_seconds_count{handler="scale"} 1.0',
        'rules_engine_action_latency_seconds_count{handler="notify"} 1.0',
        "rules_engine_batch_latency_seconds_count 1.0",
        "rules_engine_batch_latency_seconds_sum 0.25",
        f'rules_engine_rules_version_info{{version="{shop_rules.version}"}} 1.0',
        "rules_engine_rules_stale 0.0",
        'rules_engine_tier_info{tier="growth"} 1.0',
    }
    assert expected <= metric_lines(body)


def test_fires_are_counted_once_across_batches_and_engines(
    observability: Observability, shop_rules: RuleSet, feed: Feed
) -> None:
    """A batch adds only new fires; a new engine's counts start from zero."""
    lines = ORDERS.read_bytes().splitlines()
    first = Engine(shop_rules)
    feed(first, observability, lines)
    feed(first, observability, [])
    second = Engine(shop_rules)
    feed(second, observability, lines)
    first.close()
    second.close()

    fires = observability.registry.get_sample_value(
        "rules_engine_rule_fires_total", {"rule": "order-burst"}
    )
    assert fires == 2.0


def test_backlog_and_tier_gauges_hold_the_latest_value(
    observability: Observability,
) -> None:
    """Only the current tier has a series; the backlog is the last seen."""
    observability.set_backlog(1200)
    observability.set_backlog(35)
    observability.set_tier("mvp")
    observability.set_tier("growth")

    lines = metric_lines(observability.metrics_text())

    assert "rules_engine_subscription_backlog_messages 35.0" in lines
    assert 'rules_engine_tier_info{tier="growth"} 1.0' in lines
    assert not any(
        line.startswith('rules_engine_tier_info{tier="mvp"') for line in lines
    )


# Health and readiness


def test_readyz_answers_503_with_the_reason_until_the_worker_is_ready(
    server: StatusServer, observability: Observability
) -> None:
    """Starting, ready, then not ready again when a backend stops answering."""
    url = f"{server.url}/readyz"
    steps = []
    steps.append(fetch_json(url))
    observability.set_ready(True)
    steps.append(fetch_json(url))
    observability.set_ready(False, "Firestore did not answer within 10 s.")
    steps.append(fetch_json(url))

    assert steps == [
        (503, {"ready": False, "reason": "The engine is starting."}),
        (200, {"ready": True, "reason": ""}),
        (503, {"ready": False, "reason": "Firestore did not answer within 10 s."}),
    ]


def test_readyz_answers_503_while_a_backend_fails_and_200_once_it_answers(
    server: StatusServer, observability: Observability
) -> None:
    """A failing backend makes a ready engine unready, with its reason."""
    url = f"{server.url}/readyz"
    failing = "Commits to Firestore are failing: Firestore is unavailable."
    steps = []
    observability.set_ready(True)
    observability.set_backend("firestore", ok=False, reason=failing)
    steps.append(fetch_json(url))
    steps.append(metric_lines(observability.metrics_text()))
    observability.set_backend("firestore", ok=True)
    steps.append(fetch_json(url))
    steps.append(metric_lines(observability.metrics_text()))

    assert steps[0] == (503, {"ready": False, "reason": failing})
    assert 'rules_engine_backend_up{backend="firestore"} 0.0' in steps[1]
    assert steps[2] == (200, {"ready": True, "reason": ""})
    assert 'rules_engine_backend_up{backend="firestore"} 1.0' in steps[3]


def test_a_starting_engine_names_its_start_before_a_failing_backend(
    observability: Observability,
) -> None:
    """Not yet ready and a backend failing: the start is the reason given."""
    observability.set_backend("firestore", ok=False, reason="Firestore is away.")

    assert observability.readiness() == {
        "ready": False,
        "reason": "The engine is starting.",
    }


def test_healthz_fails_once_the_loop_stops_reporting_and_tells_staleness(
    server: StatusServer, observability: Observability, clock: FakeClock
) -> None:
    """Alive while heartbeats come; a failed reload is reported, not fatal."""
    url = f"{server.url}/healthz"
    steps = []
    observability.mark_reload(False, ["bad.yaml:1:1: broken", "1 problem in 1 file."])
    steps.append(fetch_json(url))
    clock.advance(LIVENESS_TIMEOUT + 1)
    steps.append(fetch_json(url))
    observability.heartbeat()
    observability.mark_reload(True)
    steps.append(fetch_json(url))

    assert steps == [
        (200, {"alive": True, "seconds_since_heartbeat": 0.0, "rules_stale": True}),
        (503, {"alive": False, "seconds_since_heartbeat": 61.0, "rules_stale": True}),
        (200, {"alive": True, "seconds_since_heartbeat": 0.0, "rules_stale": False}),
    ]


def test_an_unknown_path_is_404(server: StatusServer) -> None:
    """Only the documented endpoints answer."""
    assert fetch_json(f"{server.url}/admin") == (
        404,
        {"error": "No page is at /admin."},
    )


# Status JSON


def test_status_json_reports_tier_rules_counts_rates_and_actions(
    server: StatusServer,
    observability: Observability,
    replayed: Engine,
    shop_rules: RuleSet,
    clock: FakeClock,
) -> None:
    """Everything the page shows comes from one document."""
    clock.advance(1)
    status, body = fetch_json(f"{server.url}/status.json")

    assert status == 200
    assert body["tier"]["name"] == "growth"
    assert body["tier"]["config"]["functions"] == {
        "memoryMb": 512,
        "timeoutSeconds": 60,
        "minInstances": 1,
        "maxInstances": 50,
    }
    assert body["rules"]["version"] == shop_rules.version
    assert body["rules"]["rules"] == [
        {
            "name": "order-burst",
            "kind": "threshold",
            "mode": "active",
            "priority": 0,
            "file": str(RULES / "shop.yaml"),
            "line": 21,
        },
        {
            "name": "big-order",
            "kind": "event",
            "mode": "active",
            "priority": 10,
            "file": str(RULES / "shop.yaml"),
            "line": 29,
        },
    ]
    assert body["counts"] == {
        "received": 8,
        "accepted": 7,
        "rejected": 1,
        "duplicates": 1,
        "actions": 2,
        "backlog": None,
    }
    assert len(body["rates"]["events"]) == 600
    assert body["rates"]["events"][-1] == 8
    assert body["rates"]["actions"][-1] == 2
    # Newest first: order 6 fires big-order (priority 10) before order-burst.
    burst = body["actions"][0]
    assert [a["rule"] for a in body["actions"]] == ["order-burst", "big-order"]
    assert burst["why"] == {
        "condition": "count over 1h above 5",
        "value": 6,
        "events": ["order-1", "order-2", "order-3", "order-4", "order-5", "order-6"],
        "rules_version": shop_rules.version,
    }
    assert burst["params"] == {"target": "checkout", "factor": 2}
    assert burst["seconds"] >= 0.0
    assert body["reload"] is None


def test_the_action_ring_keeps_the_latest_200(observability: Observability) -> None:
    """Older actions drop off; memory stays bounded whatever the traffic."""
    for index in range(250):
        observability.record_action(_action(f"rule-{index}", {}, "count"), 0.001)

    actions = observability.status()["actions"]

    assert len(actions) == 200
    assert (actions[0]["rule"], actions[-1]["rule"]) == ("rule-249", "rule-50")


@pytest.mark.parametrize(
    ("adds", "now", "expected"),
    [
        ([(10.2, 1), (10.9, 2), (12.5, 4)], 13.0, [0, 3, 0, 4]),
        # A slot from an earlier lap of the ring reads as zero.
        ([(2.0, 5), (7.0, 1)], 8.0, [0, 0, 0, 1]),
        # The second still filling up is left out.
        ([(13.5, 9)], 13.7, [0, 0, 0, 0]),
    ],
)
def test_a_rate_ring_counts_per_whole_second(
    adds: list[tuple[float, int]], now: float, expected: list[int]
) -> None:
    """Four slots: the four whole seconds before `now`, oldest first."""
    ring = RateRing(4)
    for at, count in adds:
        ring.add(at, count)

    assert ring.series(now) == expected


# Escaping

PAYLOAD = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def _action(rule: str, params: dict[str, Any], condition: str) -> ActionRecord:
    why = Explanation(condition, None, ["e-1"], "v1")
    return ActionRecord("a1", 0.0, rule, "notify", params, "e-1", "t.x", why, "ok")


@pytest.mark.parametrize(
    "inject",
    [
        pytest.param(
            lambda o: o.record_action(_action(PAYLOAD, {}, "c")), id="rule name"
        ),
        pytest.param(
            lambda o: o.record_action(_action("r", {"title": PAYLOAD}, "c")),
            id="action param",
        ),
        pytest.param(
            lambda o: o.record_action(_action("r", {}, PAYLOAD)), id="explanation"
        ),
        pytest.param(
            lambda o: o.mark_reload(False, [f"x.yaml:1:1: rule {PAYLOAD}"]),
            id="reload problem",
        ),
        pytest.param(lambda o: o.set_tier(PAYLOAD), id="tier"),
        pytest.param(lambda o: o.set_rules(_rules_in(PAYLOAD)), id="rule file"),
    ],
)
def test_the_status_page_escapes_values_from_rules_and_events(
    server: StatusServer, observability: Observability, inject: Any
) -> None:
    """Markup in any shown value arrives as text, never as an element."""
    inject(observability)

    status, headers, body = fetch(f"{server.url}/")
    page = body.decode()

    assert status == 200
    assert PAYLOAD not in page
    assert ESCAPED in page
    # The page runs only its own inline code, marked with this response's nonce.
    nonce = re.search(r"script-src 'nonce-([^']+)'", headers["Content-Security-Policy"])
    assert nonce is not None
    assert page.count("<script") == 1
    assert f'<script nonce="{nonce.group(1)}">' in page


def test_a_quote_in_the_readiness_reason_cannot_leave_its_attribute(
    server: StatusServer, observability: Observability
) -> None:
    """The reason is shown in a title attribute, so quotes are escaped too."""
    observability.set_ready(False, '" onmouseover="alert(1)')

    _, _, body = fetch(f"{server.url}/")

    assert 'title="&quot; onmouseover=&quot;alert(1)"' in body.decode()


def _rules_in(file: str) -> RuleSet:
    shop = load_rules(RULES)
    moved = [LoadedRule(r.spec, file, r.line, r.order) for r in shop.rules]
    return RuleSet(moved, shop.tiers, shop.settings, shop.version, [file])

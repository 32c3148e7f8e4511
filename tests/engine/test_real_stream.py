"""The shipped rules on the real demo stream behave as operations expect.

The stream follows real series (see data/nab/README.md): contributions
follow Twitter mentions of AMZN in 5-minute buckets, active users follow
New York taxi demand every 30 minutes, response time follows an EC2 trace.
These tests read the series themselves and check the actions against them.
"""

from __future__ import annotations

import bisect
import csv
import itertools
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]
NAB = ROOT / "data" / "nab" / "data"


def _epoch(text: str) -> float:
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _series(name: str) -> list[tuple[float, float]]:
    with (NAB / name).open() as handle:
        rows = list(csv.reader(handle))[1:]
    return [(_epoch(row[0]), float(row[1])) for row in rows]


@pytest.fixture(scope="module")
def actions(demo_replay: Any) -> list[dict[str, Any]]:
    _, path = demo_replay
    with Path(path).open("rb") as handle:
        return [orjson.loads(line) for line in handle]


@pytest.fixture(scope="module")
def amzn() -> list[tuple[float, float]]:
    return _series("realTweets/Twitter_volume_AMZN.csv")


def _of(actions: list[dict[str, Any]], rule: str) -> list[dict[str, Any]]:
    return [a for a in actions if a["rule"] == rule]


def _bucket_count(series: list[tuple[float, float]], ts: float) -> float:
    starts = [start for start, _ in series]
    index = bisect.bisect_right(starts, ts) - 1
    return series[index][1]


def test_every_line_of_the_stream_is_accounted_for(demo_replay: Any) -> None:
    """Read equals accepted plus rejected, and the real stream has no reject."""
    summary, _ = demo_replay

    assert summary.read == summary.accepted + summary.rejected_total
    assert summary.read == 896_656
    assert summary.rejected_total == 0


def test_payment_scaling_fires_in_bursts_and_never_in_quiet_hours(
    actions: list[dict[str, Any]], amzn: list[tuple[float, float]]
) -> None:
    """Scale-ups land in 5-minute buckets of at least 240 contributions.

    51 contributions in a minute is a rate of 255 per 5 minutes; a firing can
    straddle two buckets, so the busier of the two must carry the burst.
    No scale-up happens in a bucket under 100 (20 a minute).
    """
    ups = _of(actions, "scale-payments-on-contribution-burst")

    assert len(ups) >= 10
    for action in ups:
        at = _epoch(action["at"])
        busiest = max(_bucket_count(amzn, at), _bucket_count(amzn, at - 60))
        assert busiest >= 240, action
        assert action["why"]["value"] > 50
        assert action["params"] == {
            "target": "payment-functions",
            "factor": 2,
            "reason": f"{action['why']['value']} contributions in the last minute",
        }
    quiet = [a for a in ups if _bucket_count(amzn, _epoch(a["at"])) < 100]
    assert quiet == []


def test_scale_ups_respect_the_cooldown(actions: list[dict[str, Any]]) -> None:
    """Two scale-ups of payment functions are at least 5 minutes apart."""
    times = [
        _epoch(a["at"]) for a in _of(actions, "scale-payments-on-contribution-burst")
    ]

    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert min(gaps) >= 300


def test_scaling_stays_within_each_tiers_bounds(actions: list[dict[str, Any]]) -> None:
    """Every scale result lies within the bounds of the tier current at the time."""
    bounds = {
        "mvp": (1, 10),
        "growth": (1, 50),
        "scale": (2, 200),
        "enterprise": (5, 1000),
    }
    tier = "mvp"
    for action in actions:
        if action["action"] == "change_tier" and action["result"]["changed"]:
            tier = action["result"]["to"]
        if action["action"] == "scale":
            low, high = bounds[tier]
            result = action["result"]
            assert (result["min"], result["max"]) == (low, high)
            assert low <= result["replicas"] <= high


def test_tier_follows_the_daily_cycle_without_flapping(
    actions: list[dict[str, Any]],
) -> None:
    """The tier moves about twice a day, never twice within the hour it must hold.

    Active users follow taxi demand: tens of thousands by day (enterprise),
    a few thousand at night (scale).
    """
    changes = _of(actions, "tier-by-active-users")
    times = [_epoch(a["at"]) for a in changes]
    days = Counter(datetime.fromtimestamp(t, UTC).date() for t in times)

    assert {a["params"]["to"] for a in changes} == {"scale", "enterprise"}
    assert min(later - earlier for earlier, later in itertools.pairwise(times)) >= 3600
    assert max(days.values()) <= 4
    assert len(days) >= 50
    targets = [a["params"]["to"] for a in changes]
    assert all(a != b for a, b in itertools.pairwise(targets))


def test_each_tier_change_announces_itself(actions: list[dict[str, Any]]) -> None:
    """Every tier change is followed by its tier.changed announcement."""
    changes = _of(actions, "tier-by-active-users")
    announcements = _of(actions, "announce-tier-change")

    assert [a["params"]["title"] for a in announcements] == [
        f"Platform tier changed to {c['params']['to']}" for c in changes
    ]
    assert [a["at"] for a in announcements] == [c["at"] for c in changes]


def test_alerts_fire_on_the_real_signals(actions: list[dict[str, Any]]) -> None:
    """The outage spike raises the response-time warning; load raises the others."""
    response = _of(actions, "alert-response-time-warning")
    requests = _of(actions, "alert-requests-warning")

    assert len(response) == 1
    assert response[0]["at"].startswith("2015-03-")
    assert response[0]["why"]["value"] > 2000
    assert len(requests) >= 5
    assert len(_of(actions, "alert-active-users-warning")) == 1
    assert len(_of(actions, "alert-active-users-critical")) == 1


def test_stats_invalidations_are_coalesced_to_one_a_minute(
    actions: list[dict[str, Any]], demo_replay: Any
) -> None:
    """843,768 contributions purge stats:* at most once per minute of event time."""
    summary, _ = demo_replay
    purges = _of(actions, "invalidate-stats")
    times = [_epoch(a["at"]) for a in purges]

    assert summary.engine.fires["invalidate-stats"] == 843_768
    assert 0 < len(purges) < 843_768 / 10
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert min(gaps) >= 60 - 1e-6

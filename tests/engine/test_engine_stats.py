"""The engine's counters read like counters: a key never counted is 0."""

from __future__ import annotations

from engine.engine import EngineStats, Tally


def test_a_key_never_counted_reads_as_zero_and_is_not_added() -> None:
    """Reading a missing key gives 0 and leaves the tally empty."""
    tally: Tally[str] = Tally()

    assert tally["invalidate-stats"] == 0
    assert tally == {}


def test_counting_adds_up_per_key() -> None:
    """Each `+= 1` counts once for its own key."""
    stats = EngineStats()
    for rule in ("invalidate-stats", "invalidate-stats", "scale-kyc-on-queue"):
        stats.fires[rule] += 1
    stats.actions[("scale", "ok")] += 1

    assert stats.fires == {"invalidate-stats": 2, "scale-kyc-on-queue": 1}
    assert stats.actions == {("scale", "ok"): 1}

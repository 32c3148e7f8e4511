"""Tests of the seeded data made for recorded streams."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from engine.errors import ConfigurationError
from engine.event_data import DATA_MODELS
from engine.synthetic_data import (
    CONTRIBUTOR_POOL_SIZE,
    ProjectPool,
    make_funding_data,
    make_project_data,
    pick_contributor,
    synthesiser_for,
)


def test_project_pool_picks_only_launched_projects() -> None:
    """Before a project's launch no event can name it."""
    pool = ProjectPool.build(10, seed=1, launches=[1_000, 2_000, 3_000])
    rng = random.Random(0)

    def picked(ms: int) -> set[str]:
        return {pool.pick(rng, ms) for _ in range(2_000)}

    existing = {f"prj-{n:04d}" for n in range(1, 8)}
    assert picked(999) == existing
    assert picked(1_000) == existing | {"prj-0008"}
    assert picked(5_000) == existing | {"prj-0008", "prj-0009", "prj-0010"}
    assert pool.launched_during() == [
        ("prj-0008", 1_000),
        ("prj-0009", 2_000),
        ("prj-0010", 3_000),
    ]


def test_project_pool_makes_a_few_projects_popular() -> None:
    """The five most popular of 500 projects draw about a quarter of events."""
    pool = ProjectPool.build(500, seed=0)
    rng = random.Random(0)
    counts = Counter(pool.pick(rng, 0) for _ in range(20_000))

    top_five = sum(count for _, count in counts.most_common(5))
    assert 0.15 < top_five / 20_000 < 0.35
    assert len(counts) > 400


def test_project_pool_needs_a_project_from_the_start() -> None:
    """A pool where every project launches late could not serve early events."""
    with pytest.raises(ConfigurationError, match="cannot have 3 launches"):
        ProjectPool.build(3, launches=[1, 2, 3])


def test_contributors_come_from_the_pool_with_repeat_givers() -> None:
    """Ids stay inside the pool and low numbers recur more often."""
    rng = random.Random(0)
    numbers = [int(pick_contributor(rng)[4:]) for _ in range(10_000)]

    assert min(numbers) >= 0
    assert max(numbers) < CONTRIBUTOR_POOL_SIZE
    low = sum(1 for n in numbers if n < CONTRIBUTOR_POOL_SIZE // 4)
    assert low > 4_500


@pytest.mark.parametrize("event_type", sorted(set(DATA_MODELS) - {"metrics.sampled"}))
def test_synthesised_data_fits_each_model(event_type: str) -> None:
    """Whatever a known type's model asks for, the synthesiser provides."""
    synthesise = synthesiser_for(event_type, ProjectPool.build(seed=0))
    rng = random.Random(0)
    model = DATA_MODELS[event_type]

    for number in range(200):
        model.validate_python(synthesise(rng, f"e-{number}", 0))


def test_project_and_funding_data_agree_on_the_goal() -> None:
    """A funded project reports the goal it was created with and beats it."""
    rng = random.Random(3)
    created = make_project_data(rng, "prj-0042")
    funded = make_funding_data(rng, "prj-0042", created["goal"])

    assert funded["projectId"] == created["projectId"] == "prj-0042"
    assert funded["goal"] == created["goal"]
    assert created["goal"] <= funded["fundedAmount"] <= created["goal"] * 1.4

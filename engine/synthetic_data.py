"""Plausible, seeded data for the platform's known event types.

Recorded streams built from real load curves need data that passes each
type's model and behaves like the platform's: contributions go to a pool
of projects where a few are popular, come from a pool of people where
some give again and again, and carry amounts people actually give. Every
draw comes from a `random.Random` the caller seeds, so the same seed
gives the same data.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from engine.errors import ConfigurationError
from engine.event_data import DATA_MODELS

__all__ = [
    "CONTRIBUTOR_POOL_SIZE",
    "PROJECT_CATEGORIES",
    "DataSynthesiser",
    "ProjectPool",
    "make_funding_data",
    "make_project_data",
    "pick_contributor",
    "synthesiser_for",
]

CONTRIBUTOR_POOL_SIZE = 20_000
PROJECT_CATEGORIES = (
    "art",
    "community",
    "design",
    "education",
    "film",
    "food",
    "games",
    "music",
    "publishing",
    "technology",
)

# A synthesiser takes a seeded generator, the event's id and its time.
DataSynthesiser = Callable[[random.Random, str, int], dict[str, Any]]

# The launch time of projects that exist before any event.
_ALWAYS = -(2**62)
_ROUND_AMOUNTS = (5, 10, 10, 20, 25, 25, 50, 50, 100, 250, 500)
_GOALS = (1_000, 2_500, 5_000, 10_000, 25_000)
_TIERS = ("free", "standard", "premium")


@dataclass(frozen=True, slots=True)
class ProjectPool:
    """Projects that events refer to, a few popular, some launched late.

    `launch_ms` is sorted; a project launched at or before an event's time
    can be picked for it, with odds set by `cum_weights` (cumulative, in
    the same order as `ids`).
    """

    ids: tuple[str, ...]
    launch_ms: tuple[int, ...]
    cum_weights: tuple[float, ...]

    @classmethod
    def build(
        cls, size: int = 500, *, seed: int = 0, launches: Sequence[int] = ()
    ) -> ProjectPool:
        """Build a pool whose last `len(launches)` projects launch at those times.

        The other projects exist from the start. Popularity follows a Zipf
        law over a seeded shuffle of ranks, so a handful of projects draw
        most events and popularity does not depend on launch order.
        """
        if len(launches) >= size:
            raise ConfigurationError(
                f"A pool of {size} projects needs at least one project that exists "
                f"from the start, so it cannot have {len(launches)} launches."
            )
        ranks = list(range(1, size + 1))
        random.Random(f"{seed}:project-ranks").shuffle(ranks)
        cumulative: list[float] = []
        total = 0.0
        for rank in ranks:
            total += rank**-0.8
            cumulative.append(total)
        existing = size - len(launches)
        launch_ms = [_ALWAYS] * existing + sorted(launches)
        return cls(
            ids=tuple(f"prj-{number:04d}" for number in range(1, size + 1)),
            launch_ms=tuple(launch_ms),
            cum_weights=tuple(cumulative),
        )

    def pick(self, rng: random.Random, ms: int) -> str:
        """Pick a project launched by `ms`, popular ones more often."""
        # `build` keeps at least one project launched from the start.
        live = bisect.bisect_right(self.launch_ms, ms)
        point = rng.random() * self.cum_weights[live - 1]
        return self.ids[bisect.bisect_right(self.cum_weights, point, 0, live - 1)]

    def launched_during(self) -> list[tuple[str, int]]:
        """Return (project id, launch time) of every project that launches late."""
        return [
            (project, ms)
            for project, ms in zip(self.ids, self.launch_ms, strict=True)
            if ms > _ALWAYS
        ]


def pick_contributor(rng: random.Random) -> str:
    """Pick a user id from the contributor pool; low numbers recur more often."""
    # Squaring a uniform draw gives repeat contributors without a weight table.
    number = int(CONTRIBUTOR_POOL_SIZE * rng.random() ** 2)
    return f"usr-{number:05d}"


def make_project_data(rng: random.Random, project_id: str) -> dict[str, Any]:
    """Make the data of a `project.created` event for `project_id`."""
    return {
        "projectId": project_id,
        "creatorUid": pick_contributor(rng),
        "category": rng.choice(PROJECT_CATEGORIES),
        "goal": rng.choice(_GOALS),
    }


def make_funding_data(
    rng: random.Random, project_id: str, goal: int | None = None
) -> dict[str, Any]:
    """Make the data of a `project.funded` event; funded projects beat their goal."""
    goal = rng.choice(_GOALS) if goal is None else goal
    return {
        "projectId": project_id,
        "fundedAmount": round(goal * rng.uniform(1.0, 1.4), 2),
        "goal": goal,
    }


def _amount(rng: random.Random) -> float:
    # Most people give a round sum; the rest type an amount with cents.
    if rng.random() < 0.6:
        return float(rng.choice(_ROUND_AMOUNTS))
    return round(min(500.0, max(5.0, rng.lognormvariate(math.log(30), 0.9))), 2)


def _currency(rng: random.Random) -> str:
    draw = rng.random()
    return "EUR" if draw < 0.55 else "USD" if draw < 0.85 else "GBP"


def synthesiser_for(event_type: str, projects: ProjectPool) -> DataSynthesiser:
    """Return the function that makes plausible data for `event_type`.

    The function takes a seeded random generator, the event's id and its
    time; types without a data model get empty data.

    Raises:
        ConfigurationError: the type carries measurements, not counted facts.
    """
    if event_type == "metrics.sampled":
        raise ConfigurationError(
            "A metrics.sampled event carries a measured value; import it with "
            "--field NAME rather than --counts."
        )

    def contribution(rng: random.Random, event_id: str, ms: int) -> dict[str, Any]:
        return {
            "contributionId": f"ctb-{event_id}",
            "projectId": projects.pick(rng, ms),
            "contributorUid": pick_contributor(rng),
            "amount": _amount(rng),
            "currency": _currency(rng),
        }

    def project_created(rng: random.Random, event_id: str, ms: int) -> dict[str, Any]:
        return make_project_data(rng, f"prj-{event_id}")

    def project_ref(rng: random.Random, event_id: str, ms: int) -> dict[str, Any]:
        return {"projectId": projects.pick(rng, ms)}

    def project_funded(rng: random.Random, event_id: str, ms: int) -> dict[str, Any]:
        return make_funding_data(rng, projects.pick(rng, ms))

    def user_ref(rng: random.Random, event_id: str, ms: int) -> dict[str, Any]:
        return {"uid": pick_contributor(rng)}

    def tier_changed(rng: random.Random, event_id: str, ms: int) -> dict[str, Any]:
        index = rng.randrange(len(_TIERS) - 1)
        return {"from": _TIERS[index], "to": _TIERS[index + 1], "reason": "usage"}

    def no_data(rng: random.Random, event_id: str, ms: int) -> dict[str, Any]:
        return {}

    synthesisers: dict[str, DataSynthesiser] = {
        "contribution.created": contribution,
        "project.created": project_created,
        "project.updated": project_ref,
        "project.completed": project_ref,
        "project.funded": project_funded,
        "tier.changed": tier_changed,
    }
    if event_type.startswith("user.") and event_type in DATA_MODELS:
        return user_ref
    return synthesisers.get(event_type, no_data)

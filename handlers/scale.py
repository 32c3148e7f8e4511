"""`scale`: set the desired capacity of a target, within the tier's bounds.

The desired instance count of each target lives in the handler state
(`scaling_targets/{target}`), so it is saved and restored with the engine.
A target starts at the current tier's minimum (at least one instance).
Given a publisher, the handler also announces each change as a
`scaling.applied` event, for whatever applies capacity outside the engine.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from handlers.base import ActionRequest, HandlerContext
from handlers.publishing import PublishingHandler

__all__ = ["ScaleHandler", "desired_replicas"]

NAMESPACE = "scaling_targets"


class ScaleParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field(min_length=1)
    factor: float = Field(gt=0, le=100)
    reason: str = ""


def desired_replicas(current: int, factor: float, low: int, high: int) -> int:
    """Return the new instance count: scaled, rounded away from `current`."""
    scaled = current * factor
    wanted = math.ceil(scaled) if factor >= 1 else math.floor(scaled)
    return max(low, min(high, max(wanted, 1)))


class ScaleHandler(PublishingHandler):
    """Record the desired capacity of a scaling target."""

    name: ClassVar[str] = "scale"
    Params = ScaleParams

    def execute(
        self, request: ActionRequest, params: Any, context: HandlerContext
    ) -> dict[str, Any]:
        """Scale the target by the factor, clamped to the tier's bounds."""
        low, high = 1, 1000
        tier = context.tier
        if tier is not None and tier in context.tiers:
            functions = context.tiers[tier].functions
            low, high = max(functions.minInstances, 1), functions.maxInstances

        stored = context.state.get(NAMESPACE, params.target)
        current = int(stored["replicas"]) if stored else low
        replicas = desired_replicas(current, params.factor, low, high)
        desired = {
            "replicas": replicas,
            "minInstances": low,
            "maxInstances": high,
            "factor": params.factor,
            "reason": params.reason,
            "rule": request.rule,
        }
        self.announce(
            request,
            "scaling.applied",
            {"target": params.target, "previous": current, **desired, "tier": tier},
            subject=params.target,
        )
        context.state.set(NAMESPACE, params.target, {**desired, "at": request.at})
        return {"previous": current, "replicas": replicas, "min": low, "max": high}

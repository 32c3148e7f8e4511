"""`change_tier`: move the platform to another tier and apply its configuration.

The current tier lives in the handler state (`system_config/tier`) with its
history; a change emits `tier.changed` back into the engine so that rules
may react to it. Given a publisher, the handler also publishes that event,
with the tier's configuration, for whatever applies it outside the engine.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from engine.errors import HandlerError
from handlers.base import ActionRequest, HandlerContext
from handlers.publishing import PublishingHandler
from handlers.scale import NAMESPACE as SCALING_NAMESPACE

__all__ = ["ChangeTierHandler"]

NAMESPACE = "system_config"


class ChangeTierParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: str = Field(min_length=1)
    reason: str = ""


class ChangeTierHandler(PublishingHandler):
    """Apply a tier's configuration and announce the change."""

    name: ClassVar[str] = "change_tier"
    Params = ChangeTierParams

    def execute(
        self, request: ActionRequest, params: Any, context: HandlerContext
    ) -> dict[str, Any]:
        """Switch tiers; a change to the current tier does nothing."""
        if params.to not in context.tiers:
            known = ", ".join(context.tiers) or "none"
            raise HandlerError(
                f"The tier {params.to!r} is not configured; the rule files define: "
                f"{known}."
            )
        previous = context.tier
        if previous == params.to:
            return {"changed": False, "tier": previous}

        config = context.tiers[params.to].model_dump(mode="json")
        self.announce(
            request,
            "tier.changed",
            {
                "from": previous,
                "to": params.to,
                "reason": params.reason,
                "rule": request.rule,
                "config": config,
            },
            subject=params.to,
        )
        context.state.set(
            NAMESPACE,
            "tier",
            {
                "tier": params.to,
                "previous": previous,
                "at": request.at,
                "config": config,
            },
        )
        history = context.state.get(NAMESPACE, "tier_history") or []
        history = [
            *history[-99:],
            {"from": previous, "to": params.to, "at": request.at},
        ]
        context.state.set(NAMESPACE, "tier_history", history)
        rescaled = _clamp_targets(context, params.to, request)
        context.emit(
            "tier.changed",
            {"from": previous, "to": params.to, "reason": params.reason},
            request.at,
        )
        result: dict[str, Any] = {
            "changed": True,
            "from": previous,
            "to": params.to,
            "config": config,
        }
        if rescaled:
            result["rescaled"] = rescaled
        return result


def _clamp_targets(
    context: HandlerContext, tier: str, request: ActionRequest
) -> dict[str, dict[str, int]]:
    """Bring every scaling target within the new tier's instance bounds.

    Applying a tier's configuration includes its bounds; leaving a target
    outside them until its next scaling rule fires would let a later
    scale-down raise it (or a scale-up lower it).
    """
    functions = context.tiers[tier].functions
    low, high = max(functions.minInstances, 1), functions.maxInstances
    rescaled = {}
    for target in context.state.keys(SCALING_NAMESPACE):
        stored = context.state.get(SCALING_NAMESPACE, target)
        current = int(stored["replicas"])
        clamped = max(low, min(high, current))
        if clamped == current:
            continue
        context.state.set(
            SCALING_NAMESPACE,
            target,
            {
                **stored,
                "replicas": clamped,
                "minInstances": low,
                "maxInstances": high,
                "reason": f"tier {tier} bounds",
                "rule": request.rule,
                "at": request.at,
            },
        )
        rescaled[target] = {"from": current, "to": clamped}
    return rescaled

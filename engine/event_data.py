"""Pydantic models of the data carried by the platform's known event types.

`DATA_MODELS` maps each known type to a pydantic `TypeAdapter`. The engine
validates `data` of a known type with it and keeps the original mapping,
so rules may still name fields the model does not list.
Events of any other type are accepted as generic events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, NotRequired

from pydantic import (
    AfterValidator,
    Field,
    StrictFloat,
    StrictStr,
    TypeAdapter,
)
from typing_extensions import TypedDict

__all__ = ["DATA_MODELS", "ISO_4217_CODES", "METRIC_FIELDS"]

# Active ISO 4217 alphabetic codes. Kept inline so that validation needs no
# extra package and no network.
ISO_4217_CODES = frozenset(
    """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND
    BOB BRL BSD BTN BWP BYN BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF
    DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD
    HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW
    KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR
    MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN
    PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN
    SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VES
    VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG
    """.split()  # noqa: SIM905 - a block of codes reads better than a list
)

Identifier = Annotated[StrictStr, Field(min_length=1)]
# StrictFloat takes ints too (and refuses booleans and strings). The engine
# keeps the event's own mapping, so an int stays an int. A bound on a union
# of int and float would run a Python validator per value; on one type,
# pydantic-core checks it itself.
NonNegative = Annotated[StrictFloat, Field(ge=0)]
Positive = Annotated[StrictFloat, Field(gt=0)]


# A Literal is checked inside pydantic-core, a set lookup in Rust; a Python
# validator cost a third of a contribution's validation. Its error lists
# every code, so `describe_validation_error` words it instead.
if TYPE_CHECKING:
    Currency = str
else:
    Currency = Literal[tuple(sorted(ISO_4217_CODES))]

# The data models are TypedDicts validated by pydantic: the engine keeps the
# event's own mapping, so it needs the checks and not a model instance, and
# building instances made validation the most expensive step of an event.


class ContributionCreated(TypedDict):
    contributionId: Identifier
    projectId: Identifier
    contributorUid: Identifier
    amount: Positive
    currency: Currency


class ProjectCreated(TypedDict):
    projectId: Identifier
    creatorUid: Identifier
    category: Identifier


class ProjectRef(TypedDict):
    projectId: Identifier


class ProjectFunded(TypedDict):
    projectId: Identifier
    fundedAmount: NonNegative
    goal: Positive


class UserRef(TypedDict):
    uid: Identifier


METRIC_FIELDS = (
    "activeUsers",
    "requestsPerSecond",
    "avgResponseTimeMs",
    "errorRate",
    "databaseReads",
    "databaseWrites",
    "functionInvocations",
    "storageBytes",
    "cpuUsage",
)


class _Metrics(TypedDict, total=False):
    activeUsers: NonNegative | None
    requestsPerSecond: NonNegative | None
    avgResponseTimeMs: NonNegative | None
    errorRate: NonNegative | None
    databaseReads: NonNegative | None
    databaseWrites: NonNegative | None
    functionInvocations: NonNegative | None
    storageBytes: NonNegative | None
    cpuUsage: NonNegative | None


def _check_one_metric(sample: _Metrics) -> _Metrics:
    if all(sample.get(name) is None for name in METRIC_FIELDS):
        fields = ", ".join(METRIC_FIELDS)
        raise ValueError(f"a metrics sample needs at least one of {fields}")
    return sample


MetricsSampled = Annotated[_Metrics, AfterValidator(_check_one_metric)]

TierChanged = TypedDict(
    "TierChanged",
    {"from": NotRequired[StrictStr | None], "to": Identifier, "reason": StrictStr},
)

DATA_MODELS: dict[str, TypeAdapter[Any]] = {
    event_type: TypeAdapter(model)
    for event_type, model in {
        "contribution.created": ContributionCreated,
        "project.created": ProjectCreated,
        "project.updated": ProjectRef,
        "project.completed": ProjectRef,
        "project.funded": ProjectFunded,
        "user.kyc_submitted": UserRef,
        "user.kyc_approved": UserRef,
        "user.profile_updated": UserRef,
        "user.active": UserRef,
        "metrics.sampled": MetricsSampled,
        "tier.changed": TierChanged,
    }.items()
}


def describe_validation_error(errors: list[dict[str, Any]]) -> str:
    """Turn pydantic error entries into one readable sentence."""
    parts = []
    for error in errors[:5]:
        location = ".".join(str(p) for p in error.get("loc", ()))
        where = f"data.{location}" if location else "data"
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error.get("type") == "literal_error" and location == "currency":
            message = f"{error.get('input')!r} is not an ISO 4217 currency code"
        parts.append(f"{where}: {message}")
    return "; ".join(parts)

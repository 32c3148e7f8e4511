"""Pydantic models of the data carried by the platform's known event types.

The engine validates `data` of a known type against its model and keeps the
original mapping, so rules may still name fields the model does not list.
Events of any other type are accepted as generic events.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

__all__ = ["DATA_MODELS", "ISO_4217_CODES"]

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
    """.split()
)

Number = StrictInt | StrictFloat
Identifier = Annotated[StrictStr, Field(min_length=1)]


class _Data(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class ContributionCreated(_Data):
    contributionId: Identifier
    projectId: Identifier
    contributorUid: Identifier
    amount: Annotated[Number, Field(gt=0)]
    currency: StrictStr

    @field_validator("currency")
    @classmethod
    def _check_currency(cls, value: str) -> str:
        if value not in ISO_4217_CODES:
            raise ValueError(f"{value!r} is not an ISO 4217 currency code")
        return value


class ProjectCreated(_Data):
    projectId: Identifier
    creatorUid: Identifier
    category: Identifier


class ProjectRef(_Data):
    projectId: Identifier


class ProjectFunded(_Data):
    projectId: Identifier
    fundedAmount: Annotated[Number, Field(ge=0)]
    goal: Annotated[Number, Field(gt=0)]


class UserRef(_Data):
    uid: Identifier


_METRIC_FIELDS = (
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

NonNegative = Annotated[Number, Field(ge=0)]


class MetricsSampled(_Data):
    activeUsers: NonNegative | None = None
    requestsPerSecond: NonNegative | None = None
    avgResponseTimeMs: NonNegative | None = None
    errorRate: NonNegative | None = None
    databaseReads: NonNegative | None = None
    databaseWrites: NonNegative | None = None
    functionInvocations: NonNegative | None = None
    storageBytes: NonNegative | None = None
    cpuUsage: NonNegative | None = None

    @model_validator(mode="after")
    def _check_one_metric(self) -> MetricsSampled:
        if all(getattr(self, name) is None for name in _METRIC_FIELDS):
            fields = ", ".join(_METRIC_FIELDS)
            raise ValueError(f"a metrics sample needs at least one of {fields}")
        return self


class TierChanged(_Data):
    from_: StrictStr | None = Field(alias="from")
    to: Identifier
    reason: StrictStr


DATA_MODELS: dict[str, type[BaseModel]] = {
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
}


def describe_validation_error(errors: list[dict[str, Any]]) -> str:
    """Turn pydantic error entries into one readable sentence."""
    parts = []
    for error in errors[:5]:
        location = ".".join(str(p) for p in error.get("loc", ())) or "data"
        parts.append(f"data.{location}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)

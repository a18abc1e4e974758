"""Types shared by the Peakwise custom resources: wire conventions, durations, conditions."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel

GROUP = "peakwise.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


@dataclass(frozen=True)
class Rule:
    """A cross-field rule, written once: CEL for the API server, Python for everyone else."""

    cel: str
    message: str
    holds: Callable[[Any], bool]


def _add_cel_rules(schema: dict[str, Any], cls: type[Any]) -> None:
    rules: tuple[Rule, ...] = getattr(cls, "cel_rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [{"rule": r.cel, "message": r.message} for r in rules]


class WireModel(BaseModel):
    """Input described by users: camelCase on the wire, immutable, unknown fields rejected.

    Subclasses list cross-field rules in ``cel_rules``; they become CEL
    ``x-kubernetes-validations`` in the CRD and are checked on validation here too.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        extra="forbid",
        use_attribute_docstrings=True,
        json_schema_extra=_add_cel_rules,
    )
    cel_rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_cel_rules(self) -> Self:
        for rule in self.cel_rules:
            if not rule.holds(self):
                raise ValueError(rule.message)
        return self


class StatusModel(BaseModel):
    """Output written by the operator: camelCase on the wire, mutable, tolerant of new fields."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        use_attribute_docstrings=True,
    )


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d|w))+$"
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> timedelta:
    """Parse '90s', '10m', '1h30m', '14d' (or a timedelta, or seconds as a number)."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if not isinstance(value, str) or not re.fullmatch(DURATION_PATTERN, value):
        raise ValueError(
            f"invalid duration {value!r}: use a number with a unit, like 90s, 10m, 1h30m"
        )
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(value))
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest exact wire form of a duration: 14d, 1h30m, 90s."""
    ms = round(value.total_seconds() * 1000)
    if ms == 0:
        return "0s"
    parts = []
    for unit in ("d", "h", "m", "s", "ms"):
        size = round(_UNIT_SECONDS[unit] * 1000)
        count, ms = divmod(ms, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN}),
]
"""A length of time written as a number with a unit (ms, s, m, h, d, w), e.g. 10m or 1h30m."""

CapacityType = Literal["reserved", "spot", "onDemand"]
CAPACITY_TYPES: tuple[CapacityType, ...] = ("reserved", "spot", "onDemand")

K8sName = Annotated[
    str,
    Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
]


class ObjectMeta(BaseModel):
    """The parts of Kubernetes metadata Peakwise reads; the rest is kept untouched."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(StatusModel):
    """One aspect of the object's state, in the Kubernetes condition convention."""

    type: str
    """Condition type, e.g. Ready, Forecasting, BudgetLimited, Degraded."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: str = ""
    """One CamelCase word a program can match on."""
    message: str = ""
    """What happened and why, for a person."""
    last_transition_time: datetime | None = None
    """When the status last changed."""
    observed_generation: int | None = None
    """The .metadata.generation the condition was computed from."""

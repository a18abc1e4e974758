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
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import core_schema

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
        # JSON cannot carry them and the API server never sends them; a config file could.
        allow_inf_nan=False,
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
DURATION_MAX_LENGTH = 32
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
LONGEST_DURATION = timedelta(days=3650)
"""No duration anywhere in the API may exceed this: the planner adds durations to dates, and
a duration this long already means a mistake (a datetime overflows at about 2.7 million days)."""


def _duration_seconds(value: object, longest: timedelta = LONGEST_DURATION) -> float:
    """Seconds of '90s', '10m', '1h30m', '14d' (or a timedelta, or seconds as a number)."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif (
        isinstance(value, str)
        and len(value) <= DURATION_MAX_LENGTH
        and re.fullmatch(DURATION_PATTERN, value)
    ):
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(value))
    else:
        raise ValueError(
            f"invalid duration {value!r}: use a number with a unit, like 90s, 10m, 1h30m"
        )
    # Checked on the float, before timedelta() would raise OverflowError (not a ValueError).
    if not 0 <= seconds <= longest.total_seconds():
        raise ValueError(
            f"invalid duration {value!r}: must be between 0s and {format_duration(longest)}"
        )
    return seconds


def parse_duration(value: object) -> timedelta:
    """Parse '90s', '10m', '1h30m', '14d' (or a timedelta, or seconds as a number)."""
    if isinstance(value, timedelta):
        _duration_seconds(value)
        return value
    return timedelta(seconds=_duration_seconds(value))


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


_DURATION_SCHEMA = {"type": "string", "pattern": DURATION_PATTERN, "maxLength": DURATION_MAX_LENGTH}

Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(_DURATION_SCHEMA),
]
"""A length of time written as a number with a unit (ms, s, m, h, d, w), e.g. 10m or 1h30m.
Unbounded but for LONGEST_DURATION: a field says its own range with `DurationRange`."""


def cel_duration_seconds(expr: str) -> str:
    """CEL for the seconds of a duration string. Kubernetes' CEL `duration()` takes Go
    durations, which have no d or w, so the parts are summed: 1d12h is 86400 + 43200."""
    return (
        f"{expr}.findAll('[0-9]+([.][0-9]+)?(ms|s|m|h|d|w)').map(p, "
        "double(p.find('^[0-9]+([.][0-9]+)?')) * (p.endsWith('ms') ? 0.001 : "
        "p.endsWith('s') ? 1.0 : p.endsWith('m') ? 60.0 : p.endsWith('h') ? 3600.0 : "
        "p.endsWith('d') ? 86400.0 : 604800.0)).sum()"
    )


def duration_range_message(field: str, at_least: timedelta, at_most: timedelta) -> str:
    if at_least > timedelta(0):
        return f"{field} must be between {format_duration(at_least)} and {format_duration(at_most)}"
    return f"{field} must be at most {format_duration(at_most)}"


@dataclass(frozen=True)
class DurationRange:
    """Bounds of one Duration field, checked by the models and by the API server (CEL):
    ``Annotated[timedelta, DurationRange("forecast.history", at_most=timedelta(days=35))]``.

    `field` is the dotted path users know (forecast.history); the message names it, so the
    error reads the same from kubectl and from the models.
    """

    field: str
    at_most: timedelta
    at_least: timedelta = timedelta(0)

    @property
    def message(self) -> str:
        return duration_range_message(self.field, self.at_least, self.at_most)

    def parse(self, value: object) -> timedelta:
        seconds = _duration_seconds(value, longest=timedelta.max)
        if not self.at_least.total_seconds() <= seconds <= self.at_most.total_seconds():
            got = value if isinstance(value, str) else format_duration(timedelta(seconds=seconds))
            raise ValueError(f"{self.message}, not {got}")
        return value if isinstance(value, timedelta) else timedelta(seconds=seconds)

    def cel_rule(self) -> str:
        lo, hi = self.at_least.total_seconds(), self.at_most.total_seconds()
        bound = f"t <= {hi!r}" if lo == 0 else f"t >= {lo!r} && t <= {hi!r}"
        # [x].all(t, ...) computes the sum once for both ends of the range.
        return f"[{cel_duration_seconds('self')}].all(t, {bound})"

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_before_validator_function(
            self.parse,
            core_schema.timedelta_schema(),
            serialization=core_schema.plain_serializer_function_ser_schema(
                format_duration, return_schema=core_schema.str_schema()
            ),
        )

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        return {
            **_DURATION_SCHEMA,
            "x-kubernetes-validations": [{"rule": self.cel_rule(), "message": self.message}],
        }


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

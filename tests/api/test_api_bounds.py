"""Bounds hold in the models too, and an out-of-range value is a ValidationError naming the
field, never another exception (an OverflowError once stopped every tenant's round)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from peakwise.api.common import LONGEST_DURATION, Duration, parse_duration
from peakwise.api.gpunodepool import GPUNodePoolSpec
from peakwise.api.inferencedeployment import InferenceDeploymentSpec

SPEC: dict[str, Any] = {
    "template": {"spec": {"containers": [{"name": "vllm", "image": "vllm"}]}},
    "gpuProfiles": [{"gpuType": "h100", "throughputPerReplica": 10}],
    "demand": {"query": "q"},
}
DURATION_FIELDS = {
    ("forecast", "history"): "forecast.history",
    ("forecast", "leadTime"): "forecast.leadTime",
    ("modelLoadTime",): "modelLoadTime",
    ("scaleDown", "stabilizationWindow"): "scaleDown.stabilizationWindow",
}


def _with(path: tuple[str, ...], value: object) -> dict[str, Any]:
    spec = {**SPEC}
    if len(path) == 1:
        spec[path[0]] = value
    else:
        spec[path[0]] = {path[1]: value}
    return spec


# Text the pattern accepts, from tiny to absurd (the longest is 32 characters).
duration_texts = st.from_regex(r"[0-9]{1,20}(\.[0-9]{1,3})?(ms|s|m|h|d|w)", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(DURATION_FIELDS)), duration_texts)
def test_any_duration_text_is_accepted_or_a_validation_error(
    path: tuple[str, ...], text: str
) -> None:
    try:
        spec = InferenceDeploymentSpec.model_validate(_with(path, text))
    except ValidationError as error:
        assert error.error_count() == 1
        message = str(error)
        assert DURATION_FIELDS[path] in message or "invalid duration" in message
        return
    # Accepted: small enough to add to any date the planner meets.
    value = parse_duration(text)
    assert spec.model_dump(by_alias=True, mode="json") == _round(spec)
    assert timedelta(0) <= value <= timedelta(days=35)


def _round(spec: InferenceDeploymentSpec) -> dict[str, Any]:
    again = InferenceDeploymentSpec.model_validate(spec.model_dump(by_alias=True, mode="json"))
    return again.model_dump(by_alias=True, mode="json")


@pytest.mark.parametrize(
    ("path", "text", "message"),
    [
        (("forecast", "leadTime"), "3650000d", "forecast.leadTime must be at most 6h"),
        (("modelLoadTime",), "1000000000d", "modelLoadTime must be at most 2h"),
        (("forecast", "history"), "365d", "forecast.history must be between 1h and 35d"),
        (("forecast", "history"), "30m", "forecast.history must be between 1h and 35d"),
    ],
)
def test_the_reproduced_attacks_are_rejected_naming_the_field(
    path: tuple[str, ...], text: str, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        InferenceDeploymentSpec.model_validate(_with(path, text))


def test_the_range_ends_are_accepted() -> None:
    spec = InferenceDeploymentSpec.model_validate(
        {**SPEC, "forecast": {"history": "5w", "leadTime": "6h"}, "modelLoadTime": "2h"}
    )
    assert spec.forecast.history == timedelta(days=35)
    assert spec.forecast.lead_time == timedelta(hours=6)


def test_a_generic_duration_past_ten_years_is_a_value_error() -> None:
    adapter = TypeAdapter(Duration)
    assert adapter.validate_python("3650d") == LONGEST_DURATION
    for text in ("3651d", "99999999999999999999w"):
        with pytest.raises(ValidationError, match="must be between 0s and 3650d"):
            adapter.validate_python(text)
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(-1)


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_infinite_and_nan_numbers_are_rejected(value: float) -> None:
    with pytest.raises(ValidationError):
        InferenceDeploymentSpec.model_validate(
            {**SPEC, "gpuProfiles": [{"gpuType": "h100", "throughputPerReplica": value}]}
        )
    with pytest.raises(ValidationError):
        GPUNodePoolSpec.model_validate(
            {
                "gpuType": "h100",
                "gpusPerNode": 8,
                "capacityType": "onDemand",
                "pricePerNodeHour": value,
                "maxNodes": 1,
                "provider": {"kwok": {}},
            }
        )

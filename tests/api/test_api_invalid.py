"""Invalid manifests in tests/api/invalid/ are rejected with a message naming the field.

Each file starts with comment lines: ``# rule:`` says which rule it breaks and every
``# expect:`` line is a piece of text the error must contain. The expected text is chosen to
appear both in the models' error and in the API server's (CEL or OpenAPI schema), so the
end-to-end tests can apply the same files to a real cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from peakwise.api.costbudget import CostBudget
from peakwise.api.gpunodepool import GPUNodePool
from peakwise.api.inferencedeployment import InferenceDeployment

INVALID = Path(__file__).parent / "invalid"
MODELS: dict[str, type[BaseModel]] = {
    "InferenceDeployment": InferenceDeployment,
    "GPUNodePool": GPUNodePool,
    "CostBudget": CostBudget,
}
FILES = sorted(INVALID.glob("*.yaml"))


def expectations(path: Path) -> list[str]:
    """The ``# expect:`` texts of an invalid manifest."""
    prefix = "# expect:"
    return [
        line[len(prefix) :].strip()
        for line in path.read_text().splitlines()
        if line.startswith(prefix)
    ]


def _manifest(path: Path) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert isinstance(doc, dict)
    return doc


def test_every_rule_the_issue_names_has_an_invalid_manifest() -> None:
    names = {path.stem for path in FILES}
    assert {
        "replicas-min-above-max",
        "spot-fraction-above-one",
        "negative-price",
        "zero-price",
        "zero-throughput",
        "negative-throughput",
        "reserved-above-max",
        "reserved-on-spot",
        "no-gpu-profiles",
        "duplicate-gpu-profiles",
        "provider-two-backends",
        "budget-without-limits",
        "bad-duration",
        "bad-currency",
        "unknown-field",
        "slo-shortfall-zero",
        "slo-shortfall-above-half",
    } <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_invalid_manifest_is_rejected_with_its_message(path: Path) -> None:
    expected = expectations(path)
    assert expected, f"{path.name} has no '# expect:' line"
    assert path.read_text().startswith("# rule:")
    doc = _manifest(path)
    with pytest.raises(ValidationError) as caught:
        MODELS[doc["kind"]].model_validate(doc)
    # One problem per file, so the file tests the rule it names and nothing else.
    assert caught.value.error_count() == 1, str(caught.value)
    message = str(caught.value)
    for text in expected:
        assert text in message, f"{path.name}: {text!r} not in {message}"

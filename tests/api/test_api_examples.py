"""Every manifest in examples/ is accepted by the model of its kind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from peakwise.api.costbudget import CostBudget
from peakwise.api.gpunodepool import GPUNodePool
from peakwise.api.inferencedeployment import InferenceDeployment

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"
MODELS: dict[str, type[BaseModel]] = {
    "InferenceDeployment": InferenceDeployment,
    "GPUNodePool": GPUNodePool,
    "CostBudget": CostBudget,
}
# Only the top level: `kubectl apply -f examples/` does not descend into examples/backtest/.
FILES = sorted(EXAMPLES.glob("*.yaml"))


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_example_documents_parse_into_their_models(path: Path) -> None:
    for doc in _documents(path):
        assert doc["apiVersion"] in ("v1", "peakwise.dev/v1alpha1")
        if doc["kind"] == "Namespace":
            continue
        model = MODELS[doc["kind"]].model_validate(doc)
        assert model.metadata.name == doc["metadata"]["name"]  # type: ignore[attr-defined]


def _all() -> list[BaseModel]:
    return [
        MODELS[doc["kind"]].model_validate(doc)
        for path in FILES
        for doc in _documents(path)
        if doc["kind"] != "Namespace"
    ]


def test_examples_are_the_realistic_set_the_issue_asks_for() -> None:
    objects = _all()
    pools = [o for o in objects if isinstance(o, GPUNodePool)]
    deployments = [o for o in objects if isinstance(o, InferenceDeployment)]
    budgets = [o for o in objects if isinstance(o, CostBudget)]
    namespaces = {
        doc["metadata"]["name"]
        for path in FILES
        for doc in _documents(path)
        if doc["kind"] == "Namespace"
    }

    assert {p.spec.capacity_type for p in pools} == {"reserved", "spot", "onDemand"}
    assert len({p.spec.gpu_type for p in pools}) == 2
    # Every namespaced object lives in a namespace the examples create.
    assert {o.metadata.namespace for o in deployments + budgets} == namespaces
    assert len(namespaces) == 2
    assert {b.spec.enforcement for b in budgets} == {"Hard", "Soft"}
    assert len({d.spec.priority for d in deployments}) == len(deployments)
    assert any(len(d.spec.gpu_profiles) > 1 for d in deployments)
    # Every GPU type a deployment accepts is offered by some pool.
    offered = {p.spec.gpu_type for p in pools}
    for d in deployments:
        assert {g.gpu_type for g in d.spec.gpu_profiles} <= offered, d.metadata.name
        # The operator sets nvidia.com/gpu from the chosen profile; the template leaves it out.
        for container in d.spec.template["spec"]["containers"]:
            assert "nvidia.com/gpu" not in str(container.get("resources", {}))
    # Spot is cheaper than on-demand for the same GPU type (by roughly two thirds).
    price = {(p.spec.gpu_type, p.spec.capacity_type): p.spec.price_per_node_hour for p in pools}
    for (gpu, tier), spot_price in price.items():
        if tier == "spot" and (gpu, "onDemand") in price:
            assert 0.25 <= spot_price / price[(gpu, "onDemand")] <= 0.45

"""The operator is no deputy: a template asking for what its team could not do is rejected,
and every container's GPUs count. The same cases (tests/template_cases.py) go to the real
API server's admission policy in tests/chart/test_chart_admission_policy.py."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from template_cases import ALLOWED_CASES, TEMPLATE_CASES, with_field

from peakwise.api.gpunodepool import GPUNodePool
from peakwise.api.inferencedeployment import InferenceDeployment
from peakwise.operator.children import child_deployment
from peakwise.operator.template_policy import (
    TemplatePolicy,
    TemplateRejectedError,
    check_template,
    pod_gpus,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(
    ("case", "template", "where", "_"), TEMPLATE_CASES, ids=[c[0] for c in TEMPLATE_CASES]
)
def test_what_a_team_could_not_do_itself_is_rejected(
    case: str, template: dict[str, Any], where: str, _: str
) -> None:
    review = check_template(template, TemplatePolicy())
    assert not review.allowed, case
    assert [v.path for v in review.violations] == [where], review.violations
    assert where in review.message()


@pytest.mark.parametrize(("case", "template"), ALLOWED_CASES, ids=[c[0] for c in ALLOWED_CASES])
def test_ordinary_templates_pass(case: str, template: dict[str, Any]) -> None:
    assert check_template(template, TemplatePolicy()).violations == (), case


def test_the_examples_templates_pass() -> None:
    for path in EXAMPLES.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "InferenceDeployment":
                review = check_template(doc["spec"]["template"], TemplatePolicy())
                assert review.allowed, (path.name, review.message())


def test_the_allowlists_are_the_platforms() -> None:
    policy = TemplatePolicy.from_lists(
        service_accounts=["default", "model-server"],
        priority_classes=["inference-high"],
        toleration_keys=["example.com/gpu-maintenance"],
    )
    template = with_field("serviceAccountName", "model-server")
    template["spec"]["priorityClassName"] = "inference-high"
    template["spec"]["tolerations"] = [
        {"key": "example.com/gpu-maintenance", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert check_template(template, policy).allowed
    assert not check_template(template, TemplatePolicy()).allowed
    message = check_template(with_field("priorityClassName", "x"), policy).message()
    assert "PriorityClass 'x' is not allowed (allowed: inference-high)" in message


def test_every_violation_is_listed_at_once() -> None:
    template = with_field("hostNetwork", True)
    template["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    template["spec"]["serviceAccountName"] = "admin"
    review = check_template(template, TemplatePolicy())
    assert len(review.violations) == 3
    assert review.message().startswith("pod template rejected: spec.template.spec.hostNetwork")


# --- GPUs as the scheduler counts them ----------------------------------------------------


def _pod(containers: list[int], inits: Sequence[tuple[int, bool]] = ()) -> dict[str, Any]:
    def container(name: str, gpus: int, **extra: Any) -> dict[str, Any]:
        return {"name": name, "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}, **extra}

    return {
        "containers": [container(f"c{i}", g) for i, g in enumerate(containers)],
        "initContainers": [
            container(f"i{i}", g, **({"restartPolicy": "Always"} if sidecar else {}))
            for i, (g, sidecar) in enumerate(inits)
        ],
    }


@pytest.mark.parametrize(
    ("pod", "gpus"),
    [
        (_pod([1]), 1),
        (_pod([1, 7]), 8),  # a sidecar's 7 GPUs count
        (_pod([1], [(4, False)]), 4),  # an init container's peak
        (_pod([1], [(2, True), (1, False)]), 3),  # a native sidecar runs beside the others
        (_pod([]), 0),
    ],
)
def test_pod_gpus_counts_every_container(pod: dict[str, Any], gpus: int) -> None:
    assert pod_gpus(pod) == gpus


def test_requests_default_to_limits_and_are_counted_from_requests() -> None:
    pod = {"containers": [{"name": "a", "resources": {"requests": {"nvidia.com/gpu": 2}}}]}
    assert pod_gpus(pod) == 2


# --- children -------------------------------------------------------------------------------


def _examples(kind: str) -> dict[str, dict[str, Any]]:
    docs = {}
    for path in EXAMPLES.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == kind:
                docs[doc["metadata"]["name"]] = doc
    return docs


def test_a_rejected_template_gets_no_child() -> None:
    doc = copy.deepcopy(_examples("InferenceDeployment")["assistant"])
    doc["spec"]["template"]["spec"]["hostNetwork"] = True
    doc["spec"]["template"]["spec"]["containers"].append(
        {"name": "miner", "image": "x", "resources": {"limits": {"nvidia.com/gpu": 7}}}
    )
    infd = InferenceDeployment.model_validate(doc)
    pool = GPUNodePool.model_validate(_examples("GPUNodePool")["l40s-spot"])
    with pytest.raises(TemplateRejectedError) as caught:
        child_deployment(infd, "uid", pool, 2)
    assert len(caught.value.review.violations) == 2
    assert "hostNetwork" in str(caught.value)


def test_a_childs_pod_holds_exactly_the_profiles_gpus() -> None:
    infd = InferenceDeployment.model_validate(_examples("InferenceDeployment")["assistant-70b"])
    pool = GPUNodePool.model_validate(_examples("GPUNodePool")["h100-reserved"])
    child = child_deployment(infd, "uid", pool, 1)
    assert pod_gpus(child["spec"]["template"]["spec"]) == infd.spec.gpu_profiles[0].gpus_per_replica

from pathlib import Path

import pytest
import yaml

from peakwise.api.gpunodepool import GPUNodePool
from peakwise.api.inferencedeployment import InferenceDeployment
from peakwise.operator.children import child_deployment, child_name

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(kind: str) -> dict[str, dict[str, object]]:
    docs = {}
    for path in EXAMPLES.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == kind:
                docs[doc["metadata"]["name"]] = doc
    return docs


POOLS = {n: GPUNodePool.model_validate(d) for n, d in _load("GPUNodePool").items()}
DEPLOYMENTS = {
    n: InferenceDeployment.model_validate(d) for n, d in _load("InferenceDeployment").items()
}


def test_child_runs_on_the_pool_with_the_profile_gpus() -> None:
    infd = DEPLOYMENTS["assistant"]
    manifest = child_deployment(infd, "uid-1", POOLS["l40s-spot"], 3)
    pod = manifest["spec"]["template"]["spec"]
    assert manifest["metadata"]["name"] == "assistant-l40s-spot"
    assert manifest["spec"]["replicas"] == 3
    assert pod["nodeSelector"]["peakwise.dev/pool"] == "l40s-spot"
    assert {
        "key": "peakwise.dev/capacity-type",
        "operator": "Equal",
        "value": "spot",
        "effect": "NoSchedule",
    } in pod["tolerations"]
    profile = next(p for p in infd.spec.gpu_profiles if p.gpu_type == "nvidia-l40s-48gb")
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == str(profile.gpus_per_replica)
    owner = manifest["metadata"]["ownerReferences"][0]
    assert owner["uid"] == "uid-1" and owner["controller"] is True
    # The selector matches the pod labels, and only this pool's pods.
    selector = manifest["spec"]["selector"]["matchLabels"]
    labels = manifest["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


def test_child_does_not_change_the_parent_template() -> None:
    infd = DEPLOYMENTS["assistant"]
    before = infd.model_dump()
    child_deployment(infd, "u", POOLS["h100-reserved"], 1)
    assert infd.model_dump() == before


def test_a_pool_of_another_gpu_type_is_refused() -> None:
    infd = DEPLOYMENTS["assistant-70b"]  # H100 only
    with pytest.raises(ValueError, match="offers no GPU type"):
        child_deployment(infd, "u", POOLS["l40s-spot"], 1)


def test_long_names_are_shortened_and_stay_unique() -> None:
    a = child_name("x" * 50, "pool-a" * 3)
    b = child_name("x" * 50, "pool-b" * 3)
    assert len(a) <= 63 and len(b) <= 63 and a != b

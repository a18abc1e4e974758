import copy
from pathlib import Path

import pytest
import yaml

from peakwise.api.gpunodepool import GPUNodePool
from peakwise.api.inferencedeployment import InferenceDeployment
from peakwise.operator.children import (
    TEMPLATE_HASH,
    child_deployment,
    child_name,
    drift,
    needs_apply,
    owned_view,
    with_template_hash,
)

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


def _applied_child() -> tuple[dict[str, object], dict[str, object]]:
    """A desired child and what the API server would hold after applying it (defaults added)."""
    infd = DEPLOYMENTS["assistant"]
    desired = with_template_hash(child_deployment(infd, "uid-1", POOLS["l40s-spot"], 3))
    live = copy.deepcopy(desired)
    live["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "1"
    live["metadata"]["labels"]["team"] = "added-by-someone"
    live["spec"]["strategy"] = {"type": "RollingUpdate"}
    pod = live["spec"]["template"]["spec"]
    pod["restartPolicy"] = "Always"
    for container in pod["containers"]:
        container["imagePullPolicy"] = "IfNotPresent"
        container["terminationMessagePath"] = "/dev/termination-log"
    return desired, owned_view(live)


def test_a_child_as_applied_needs_nothing_despite_server_defaults() -> None:
    desired, live = _applied_child()
    assert drift(owned_view(desired), live) == []
    assert needs_apply(desired, live, 1, None) == ""


def test_a_hand_edit_of_an_owned_field_is_noticed() -> None:
    desired, live = _applied_child()
    scaled = copy.deepcopy(live)
    scaled["spec"]["replicas"] = 7
    assert needs_apply(desired, scaled, 2, None) == "differs at .spec.replicas"
    edited = copy.deepcopy(live)
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = "hand/edit:9"
    assert "image" in needs_apply(desired, edited, 2, None)
    relabelled = copy.deepcopy(live)
    relabelled["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "someone"
    assert "managed-by" in needs_apply(desired, relabelled, 1, None)
    untolerated = copy.deepcopy(live)
    untolerated["spec"]["template"]["spec"]["tolerations"] = []
    assert "tolerations" in needs_apply(desired, untolerated, 2, None)
    assert needs_apply(desired, None, None, None) == "missing"


def test_containers_are_matched_by_name_not_position() -> None:
    desired, live = _applied_child()
    containers = live["spec"]["template"]["spec"]["containers"]
    containers.insert(0, {"name": "sidecar-added-by-someone", "image": "x"})
    assert needs_apply(desired, live, 1, None) == ""


def test_a_field_removed_from_the_parent_is_noticed_through_the_hash() -> None:
    desired, live = _applied_child()
    infd = DEPLOYMENTS["assistant"].model_copy(deep=True)
    infd.spec.template["metadata"] = {"labels": {"extra": "x"}}
    with_extra = with_template_hash(child_deployment(infd, "uid-1", POOLS["l40s-spot"], 3))
    # Live has no `extra`: the new template adds it, and the hash differs.
    assert needs_apply(with_extra, live, 1, None)
    # The other way round: live carries a field the new template dropped; only the hash says so.
    assert with_extra["metadata"]["annotations"] != desired["metadata"]["annotations"]


def test_server_normalisation_is_not_re_applied_while_the_generation_stays() -> None:
    desired, live = _applied_child()
    resources = desired["spec"]["template"]["spec"]["containers"][0]["resources"]
    resources["requests"]["cpu"] = "0.5"
    desired = with_template_hash(desired)
    live["metadata"]["annotations"] = desired["metadata"]["annotations"]
    live_resources = live["spec"]["template"]["spec"]["containers"][0]["resources"]
    live_resources["requests"]["cpu"] = "500m"  # how the API server stores 0.5
    digest = desired["metadata"]["annotations"][TEMPLATE_HASH]
    assert needs_apply(desired, live, 4, None)  # after a restart: applied once more
    assert needs_apply(desired, live, 4, (digest, 4)) == ""  # then left alone
    assert needs_apply(desired, live, 5, (digest, 4))  # someone changed the spec since


# --- make before break -----------------------------------------------------------------


def _child(name: str, pool: str, ready: int) -> dict[str, object]:
    return {"name": name, "pool": pool, "replicas": ready, "ready": ready}


def test_a_child_the_plan_moved_away_from_goes_once_its_replacement_is_ready() -> None:
    from datetime import UTC, datetime, timedelta

    from peakwise.operator.children import children_to_remove

    now, timeout = datetime(2026, 1, 1, tzinfo=UTC), timedelta(minutes=10)
    since = {"a-spot": now}
    moving = [_child("a-spot", "spot", 4), _child("a-od", "od", 1)]
    # The plan wants 4 on od; 1 is Ready: the spot child keeps serving meanwhile.
    assert children_to_remove(moving, {"od": 4}, (), since, now, timeout) == []
    ready = [_child("a-spot", "spot", 4), _child("a-od", "od", 4)]
    assert children_to_remove(ready, {"od": 4}, (), since, now, timeout) == ["a-spot"]
    # A replacement that never comes: the old child goes after the drain timeout.
    later = now + timeout
    assert children_to_remove(moving, {"od": 4}, (), since, later, timeout) == ["a-spot"]
    # Held pools (missing or invalid) are never drained here; a plan of zero removes at once.
    assert children_to_remove(moving, {"od": 4}, ("spot",), since, later, timeout) == []
    assert children_to_remove(moving, {}, (), since, now, timeout) == ["a-spot", "a-od"]

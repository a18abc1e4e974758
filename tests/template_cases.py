"""Pod templates an InferenceDeployment may and may not carry: shared by the operator's policy
tests (tests/operator/test_template_policy.py) and the admission policy's on the real API
server (tests/chart/test_chart_admission_policy.py).

Each rejected case: (id, template, the path the operator's violation names, text the
ValidatingAdmissionPolicy's denial contains).
"""

from __future__ import annotations

import copy
from typing import Any

GOOD: dict[str, Any] = {
    "metadata": {"labels": {"app": "vllm"}},
    "spec": {
        "containers": [
            {"name": "vllm", "image": "vllm/vllm-openai:v0.8.5", "resources": {"limits": {}}},
            {"name": "metrics", "image": "exporter:1", "ports": [{"containerPort": 9400}]},
        ],
        "initContainers": [{"name": "weights", "image": "fetch:1"}],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}],
    },
}


def with_field(path: str, value: Any) -> dict[str, Any]:
    """GOOD with `value` at a dotted path under spec (lists by index: containers.1.x)."""
    template = copy.deepcopy(GOOD)
    node: Any = template["spec"]
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return template


# Reproduced in issue 13: a sidecar asking for 7 GPUs was planned and charged as 1, and a
# template with hostNetwork and a privileged container became two privileged children.
TEMPLATE_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "host-network",
        with_field("hostNetwork", True),
        "spec.template.spec.hostNetwork",
        "spec.template.spec.hostNetwork: host namespaces are not allowed",
    ),
    (
        "host-pid",
        with_field("hostPID", True),
        "spec.template.spec.hostPID",
        "spec.template.spec.hostPID: host namespaces are not allowed",
    ),
    (
        "host-ipc",
        with_field("hostIPC", True),
        "spec.template.spec.hostIPC",
        "spec.template.spec.hostIPC: host namespaces are not allowed",
    ),
    (
        "host-path",
        with_field("volumes.0", {"name": "root", "hostPath": {"path": "/"}}),
        "spec.template.spec.volumes[0].hostPath",
        "spec.template.spec.volumes[].hostPath: host paths are not allowed",
    ),
    (
        "privileged",
        with_field("containers.0.securityContext", {"privileged": True}),
        "spec.template.spec.containers[0].securityContext.privileged",
        "privileged containers are not allowed: vllm",
    ),
    (
        "privilege-escalation",
        with_field("initContainers.0.securityContext", {"allowPrivilegeEscalation": True}),
        "spec.template.spec.initContainers[0].securityContext.allowPrivilegeEscalation",
        "allowPrivilegeEscalation is not allowed: weights",
    ),
    (
        "added-capability",
        with_field("containers.1.securityContext", {"capabilities": {"add": ["SYS_ADMIN"]}}),
        "spec.template.spec.containers[1].securityContext.capabilities.add",
        "capabilities.add beyond NET_BIND_SERVICE is not allowed: metrics",
    ),
    (
        "service-account",
        with_field("serviceAccountName", "cluster-admin-sa"),
        "spec.template.spec.serviceAccountName",
        "spec.template.spec.serviceAccountName: ServiceAccount cluster-admin-sa is not allowed",
    ),
    (
        "deprecated-service-account",
        with_field("serviceAccount", "cluster-admin-sa"),
        "spec.template.spec.serviceAccount",
        "spec.template.spec.serviceAccountName: ServiceAccount cluster-admin-sa is not allowed",
    ),
    (
        "priority-class",
        with_field("priorityClassName", "system-cluster-critical"),
        "spec.template.spec.priorityClassName",
        "PriorityClass system-cluster-critical is not allowed (allowed: none)",
    ),
    (
        "toleration",
        with_field("tolerations", [{"key": "peakwise.dev/interrupted", "operator": "Exists"}]),
        "spec.template.spec.tolerations[0]",
        "spec.template.spec.tolerations: Peakwise adds the pool's tolerations",
    ),
    (
        "toleration-of-everything",
        with_field("tolerations", [{"operator": "Exists"}]),
        "spec.template.spec.tolerations[0]",
        "spec.template.spec.tolerations: Peakwise adds the pool's tolerations",
    ),
    (
        "sidecar-gpus",
        with_field("containers.1.resources", {"limits": {"nvidia.com/gpu": 7}}),
        "spec.template.spec.containers[1].resources.limits[nvidia.com/gpu]",
        "leave them out of metrics",
    ),
    (
        "model-server-gpus",
        with_field("containers.0.resources", {"requests": {"nvidia.com/gpu": "2"}}),
        "spec.template.spec.containers[0].resources.requests[nvidia.com/gpu]",
        "leave them out of vllm",
    ),
    (
        "init-gpus",
        with_field("initContainers.0.resources", {"limits": {"nvidia.com/mig-1g.10gb": 1}}),
        "spec.template.spec.initContainers[0].resources.limits[nvidia.com/mig-1g.10gb]",
        "leave them out of weights",
    ),
    (
        "node-name",
        with_field("nodeName", "control-plane"),
        "spec.template.spec.nodeName",
        "spec.template.spec.nodeName/schedulerName",
    ),
    (
        "scheduler",
        with_field("schedulerName", "my-scheduler"),
        "spec.template.spec.schedulerName",
        "spec.template.spec.nodeName/schedulerName",
    ),
    (
        "host-port",
        with_field("containers.1.ports.0", {"containerPort": 9400, "hostPort": 9400}),
        "spec.template.spec.containers[1].ports[0].hostPort",
        "host ports are not allowed: metrics",
    ),
]
ALLOWED_CASES: list[tuple[str, dict[str, Any]]] = [
    ("plain", GOOD),
    ("default-service-account", with_field("serviceAccountName", "default")),
    (
        "unprivileged",
        with_field(
            "containers.0.securityContext",
            {
                "privileged": False,
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
            },
        ),
    ),
    ("host-network-off", with_field("hostNetwork", False)),
    ("default-scheduler", with_field("schedulerName", "default-scheduler")),
]

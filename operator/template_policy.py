"""What an InferenceDeployment's pod template may ask for: nothing its team could not do itself.

The operator creates the child Deployments with its own rights, so a template copied verbatim
would make it a deputy: host namespaces, host paths, privileged containers, another
ServiceAccount's token, a PriorityClass that preempts other teams, tolerations that land on
nodes the team may not use, GPUs the planner never counted. `check_template` lists each such
field with a message; the operator reports them (Degraded) and creates nothing for that
template. The chart's ValidatingAdmissionPolicy (templates/tenancy-admission-policy.yaml)
rejects the same at admission, from the same allowlists (chart values).

GPUs are Peakwise's to set: the model server (`containers[0]`) gets the chosen profile's
`nvidia.com/gpu`, and a template asking for accelerators anywhere (a sidecar, an init
container, a device claim) is rejected rather than run uncounted. `pod_gpus` counts a pod's
GPUs the way the scheduler does, for the bill (peakwise.planner.billing) and to check the
children.

Tenant namespaces should also enforce the `restricted` Pod Security Standard, which covers
the rest of a pod's security context (docs/tenancy.md).

Pure: manifests in, violations out.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from peakwise.operator.labels import GPU_RESOURCE

DEFAULT_SCHEDULER = "default-scheduler"
HOST_NAMESPACES = ("hostNetwork", "hostPID", "hostIPC")


@dataclass(frozen=True)
class TemplatePolicy:
    """The platform's allowlists (chart values `tenancy.templatePolicy`, operator flags)."""

    service_accounts: frozenset[str] = frozenset({"default"})
    """ServiceAccounts a template may run as; unset means the namespace's `default`."""
    priority_classes: frozenset[str] = frozenset()
    """PriorityClasses a template may name (none: leave it unset)."""
    toleration_keys: frozenset[str] = frozenset()
    """Taint keys a template may tolerate itself; Peakwise adds the pool's own."""
    capabilities: frozenset[str] = frozenset({"NET_BIND_SERVICE"})
    """Linux capabilities a container may add (the restricted Pod Security level allows
    only NET_BIND_SERVICE)."""
    accelerator_prefixes: tuple[str, ...] = ("nvidia.com/",)
    """Extended resources that are accelerators: Peakwise sets them, templates may not."""

    @classmethod
    def from_lists(
        cls,
        service_accounts: Iterable[str] = ("default",),
        priority_classes: Iterable[str] = (),
        toleration_keys: Iterable[str] = (),
        capabilities: Iterable[str] = ("NET_BIND_SERVICE",),
        accelerator_prefixes: Iterable[str] = ("nvidia.com/",),
    ) -> TemplatePolicy:
        """From the chart values' lists (or repeated command-line flags)."""
        return cls(
            frozenset(service_accounts),
            frozenset(priority_classes),
            frozenset(toleration_keys),
            frozenset(capabilities),
            tuple(accelerator_prefixes),
        )


@dataclass(frozen=True)
class Violation:
    """One field a template may not set, and why."""

    path: str
    """Where, from the InferenceDeployment: spec.template.spec.containers[1].resources..."""
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class TemplateReview:
    violations: tuple[Violation, ...] = field(default_factory=tuple)

    @property
    def allowed(self) -> bool:
        return not self.violations

    def message(self, limit: int = 1000) -> str:
        """One line for a Degraded condition or an Event."""
        text = "pod template rejected: " + "; ".join(str(v) for v in self.violations)
        return text if len(text) <= limit else text[: limit - 1] + "…"


class TemplateRejectedError(ValueError):
    """A child would run a template the policy rejects."""

    def __init__(self, review: TemplateReview) -> None:
        super().__init__(review.message())
        self.review = review


def _containers(pod: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for i, container in enumerate(pod.get(kind) or []):
            if isinstance(container, Mapping):
                yield f"{kind}[{i}]", container


def _is_true(value: object) -> bool:
    return value is True


def _accelerators(resources: Mapping[str, Any], prefixes: Sequence[str]) -> list[str]:
    found = []
    for part in ("limits", "requests"):
        for name in resources.get(part) or {}:
            if any(str(name).startswith(p) for p in prefixes if p):
                found.append(f"{part}[{name}]")
    return found


def check_template(template: Mapping[str, Any], policy: TemplatePolicy) -> TemplateReview:
    """Every field of `template` (an InferenceDeployment's spec.template) the policy rejects."""
    base = "spec.template.spec"
    pod = template.get("spec") or {}
    if not isinstance(pod, Mapping):
        return TemplateReview((Violation(base, "must be a pod spec"),))
    out: list[Violation] = []

    def reject(path: str, message: str) -> None:
        out.append(Violation(f"{base}{path}", message))

    for key in HOST_NAMESPACES:
        if _is_true(pod.get(key)):
            reject(f".{key}", "host namespaces are not allowed")
    if pod.get("nodeName"):
        reject(".nodeName", "pods are placed by the scheduler on the pool Peakwise chooses")
    scheduler = pod.get("schedulerName")
    if scheduler not in (None, "", DEFAULT_SCHEDULER):
        reject(".schedulerName", f"only {DEFAULT_SCHEDULER} places Peakwise's pods")
    for key in ("serviceAccountName", "serviceAccount"):
        account = pod.get(key)
        if account not in (None, "") and account not in policy.service_accounts:
            allowed = ", ".join(sorted(policy.service_accounts)) or "none"
            reject(f".{key}", f"ServiceAccount {account!r} is not allowed (allowed: {allowed})")
    priority_class = pod.get("priorityClassName")
    if priority_class not in (None, "") and priority_class not in policy.priority_classes:
        allowed = ", ".join(sorted(policy.priority_classes)) or "none"
        reject(
            ".priorityClassName",
            f"PriorityClass {priority_class!r} is not allowed (allowed: {allowed})",
        )
    for i, toleration in enumerate(pod.get("tolerations") or []):
        taint = toleration.get("key") if isinstance(toleration, Mapping) else None
        if not taint or taint not in policy.toleration_keys:
            what = f"key {taint!r}" if taint else "an empty key (every taint)"
            reject(
                f".tolerations[{i}]",
                f"tolerating {what} is not allowed: Peakwise adds the pool's tolerations",
            )
    for i, volume in enumerate(pod.get("volumes") or []):
        if isinstance(volume, Mapping) and "hostPath" in volume:
            reject(f".volumes[{i}].hostPath", "host paths are not allowed")
    if pod.get("resourceClaims"):
        reject(".resourceClaims", "device claims are not allowed: Peakwise sets the GPUs")
    windows = (pod.get("securityContext") or {}).get("windowsOptions") or {}
    if _is_true(windows.get("hostProcess")):
        reject(".securityContext.windowsOptions.hostProcess", "host processes are not allowed")
    for where, container in _containers(pod):
        ctx = container.get("securityContext") or {}
        if _is_true(ctx.get("privileged")):
            reject(f".{where}.securityContext.privileged", "privileged containers are not allowed")
        if _is_true(ctx.get("allowPrivilegeEscalation")):
            reject(
                f".{where}.securityContext.allowPrivilegeEscalation",
                "privilege escalation is not allowed",
            )
        added = set((ctx.get("capabilities") or {}).get("add") or []) - policy.capabilities
        if added:
            reject(
                f".{where}.securityContext.capabilities.add",
                f"adding {', '.join(sorted(added))} is not allowed",
            )
        if ctx.get("procMount") not in (None, "Default"):
            reject(f".{where}.securityContext.procMount", "only the Default proc mount")
        if _is_true((ctx.get("windowsOptions") or {}).get("hostProcess")):
            reject(
                f".{where}.securityContext.windowsOptions.hostProcess",
                "host processes are not allowed",
            )
        for j, port in enumerate(container.get("ports") or []):
            if isinstance(port, Mapping) and port.get("hostPort"):
                reject(f".{where}.ports[{j}].hostPort", "host ports are not allowed")
        resources = container.get("resources") or {}
        for found in _accelerators(resources, policy.accelerator_prefixes):
            reject(
                f".{where}.resources.{found}",
                "accelerators are set by Peakwise from gpuProfiles; leave them out",
            )
        if resources.get("claims"):
            reject(f".{where}.resources.claims", "device claims are not allowed")
    return TemplateReview(tuple(out))


def _quantity(value: object) -> int:
    """An extended-resource quantity (whole numbers only: '2', 2)."""
    try:
        return max(0, int(str(value)))
    except ValueError:
        return 0


def _container_gpus(container: Mapping[str, Any], resource: str) -> int:
    resources = container.get("resources") or {}
    requests = resources.get("requests") or {}
    limits = resources.get("limits") or {}
    # An extended resource's request defaults to its limit.
    return _quantity(requests.get(resource, limits.get(resource, 0)))


def pod_gpus(pod: Mapping[str, Any], resource: str = GPU_RESOURCE) -> int:
    """GPUs a pod holds on its node, as the scheduler counts them: the larger of what its
    app containers (plus sidecars) request together and what any init container needs while
    it runs (plus the sidecars started before it)."""
    sidecars = 0
    init_peak = 0
    for container in pod.get("initContainers") or []:
        gpus = _container_gpus(container, resource)
        if container.get("restartPolicy") == "Always":  # a native sidecar keeps running
            sidecars += gpus
        else:
            init_peak = max(init_peak, sidecars + gpus)
    running = sidecars + sum(_container_gpus(c, resource) for c in pod.get("containers") or [])
    return max(running, init_peak)

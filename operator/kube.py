"""The Kubernetes adapter: every write the operator makes goes through here.

Reads come from kopf's watch-fed indexes; writes use the `kubernetes` client (synchronous,
so callers run them in a thread). Child Deployments are server-side applied, so a manual edit
of a managed field is put back on the next round and nothing else is touched.

Every child write is counted in `peakwise_child_writes_total` (by parent and verb), so a
steady round that writes nothing can be seen to write nothing. A 403 becomes `ForbiddenError`,
which says which verb on which resource in which namespace the operator's RBAC lacks.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from peakwise.operator.labels import FIELD_MANAGER, INFERENCE_DEPLOYMENT
from peakwise.operator.metrics import child_writes

# The RBAC authorizer's wording: `... cannot patch resource "deployments" in API group "apps"
# in the namespace "x"` (or `at the cluster scope`).
_DENIED = re.compile(
    r'cannot (?P<verb>\w+) resource "(?P<resource>[^"]+)" in API group "(?P<group>[^"]*)"'
    r'(?: in the namespace "(?P<namespace>[^"]+)")?'
)


class ForbiddenError(RuntimeError):
    """The API server answered 403: the operator's ServiceAccount lacks a permission."""

    def __init__(self, verb: str, resource: str, namespace: str | None, detail: str) -> None:
        self.verb, self.resource, self.namespace = verb, resource, namespace
        where = f"in namespace {namespace}" if namespace else "at the cluster scope"
        super().__init__(
            f"the operator may not {verb} {resource} {where} (grant it in the chart's RBAC): "
            f"{detail}"
        )


def server_message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or "{}").get("message", ""))[:500]
    except (ValueError, AttributeError):
        return ""


def forbidden(
    error: ApiException, verb: str, resource: str, namespace: str | None = None
) -> ForbiddenError:
    """A `ForbiddenError` naming what was denied: the server's own words when it gives them (an
    apply that creates is checked as `create`), else what the operator asked for."""
    message = server_message(error) or str(error.reason)
    found = _DENIED.search(message)
    if found:
        group = found["group"]
        resource = found["resource"] + (f".{group}" if group else "")
        verb = found["verb"]
        namespace = found["namespace"]
    return ForbiddenError(verb, resource, namespace, message)


def api_client() -> client.ApiClient:
    """In a pod: its ServiceAccount; elsewhere: $KUBECONFIG or ~/.kube/config."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        return client.ApiClient()
    except config.ConfigException:
        created: client.ApiClient = config.new_client_from_config()  # type: ignore[no-untyped-call]
        return created


class KubeAdapter:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.apps = client.AppsV1Api(api)

    def apply_deployment(self, manifest: dict[str, Any]) -> int | None:
        """Server-side apply; the child's generation afterwards."""
        meta = manifest["metadata"]
        parent = meta.get("labels", {}).get(INFERENCE_DEPLOYMENT, "")
        child_writes.labels(meta["namespace"], parent, "apply").inc()
        try:
            applied = self.apps.patch_namespaced_deployment(
                meta["name"],
                meta["namespace"],
                manifest,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type="application/apply-patch+yaml",
            )
        except ApiException as error:
            if error.status == 403:
                raise forbidden(error, "patch", "deployments.apps", meta["namespace"]) from None
            raise
        generation = applied.metadata.generation if applied.metadata else None
        return int(generation) if generation is not None else None

    def delete_deployment(self, namespace: str, name: str, parent: str = "") -> None:
        child_writes.labels(namespace, parent, "delete").inc()
        try:
            self.apps.delete_namespaced_deployment(name, namespace)
        except ApiException as error:
            if error.status == 404:  # already gone: that is what we wanted
                return
            if error.status == 403:
                raise forbidden(error, "delete", "deployments.apps", namespace) from None
            raise

    # --- targetRef workloads (operator/scale_target.py) -------------------------------------

    def _custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def read_workload(self, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
        """The workload as a dict, or None when it does not exist (403: ForbiddenError)."""
        try:
            if kind == "Deployment":
                obj: Any = self.apps.read_namespaced_deployment(name, namespace)
            elif kind == "StatefulSet":
                obj = self.apps.read_namespaced_stateful_set(name, namespace)
            else:
                obj = self._custom().get_namespaced_custom_object(
                    "leaderworkerset.x-k8s.io", "v1", namespace, "leaderworkersets", name
                )
                return _as_dict(obj)
        except ApiException as error:
            if error.status == 404:
                return None
            if error.status == 403:
                raise forbidden(error, "get", _RESOURCES[kind], namespace) from None
            raise
        return _as_dict(self.api.sanitize_for_serialization(obj))  # type: ignore[no-untyped-call]

    def list_autoscalers(self, namespace: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The HPAs (autoscaling/v2) and KEDA ScaledObjects of the namespace; no KEDA: none."""
        autoscaling = client.AutoscalingV2Api(self.api)
        try:
            listed = autoscaling.list_namespaced_horizontal_pod_autoscaler(namespace)
        except ApiException as error:
            if error.status == 403:
                raise forbidden(
                    error, "list", "horizontalpodautoscalers.autoscaling", namespace
                ) from None
            raise
        serialize = self.api.sanitize_for_serialization
        hpas = [_as_dict(serialize(h)) for h in listed.items]  # type: ignore[no-untyped-call]
        try:
            scaled = self._custom().list_namespaced_custom_object(
                "keda.sh", "v1alpha1", namespace, "scaledobjects"
            )
        except ApiException as error:
            if error.status == 404:  # KEDA is not installed
                return hpas, []
            if error.status == 403:
                raise forbidden(error, "list", "scaledobjects.keda.sh", namespace) from None
            raise
        return hpas, [_as_dict(s) for s in _as_dict(scaled).get("items") or []]

    def scale_workload(
        self, namespace: str, kind: str, name: str, replicas: int, parent: str = ""
    ) -> None:
        """Set the workload's replicas through its scale subresource (never its template);
        counted in peakwise_child_writes_total{verb="scale"} of the InferenceDeployment."""
        body = {"spec": {"replicas": replicas}}
        child_writes.labels(namespace, parent, "scale").inc()
        try:
            if kind == "Deployment":
                self.apps.patch_namespaced_deployment_scale(name, namespace, body)
            elif kind == "StatefulSet":
                self.apps.patch_namespaced_stateful_set_scale(name, namespace, body)
            else:
                self._custom().patch_namespaced_custom_object_scale(
                    "leaderworkerset.x-k8s.io", "v1", namespace, "leaderworkersets", name, body
                )
        except ApiException as error:
            if error.status == 403:
                raise forbidden(error, "patch", f"{_RESOURCES[kind]}/scale", namespace) from None
            raise


def _as_dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


_RESOURCES = {
    "Deployment": "deployments.apps",
    "StatefulSet": "statefulsets.apps",
    "LeaderWorkerSet": "leaderworkersets.leaderworkerset.x-k8s.io",
}

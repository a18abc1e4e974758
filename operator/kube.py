"""The Kubernetes adapter: every write the operator makes goes through here.

Reads come from kopf's watch-fed indexes; writes use the `kubernetes` client (synchronous,
so callers run them in a thread). Child Deployments are server-side applied, so a manual edit
of a managed field is put back on the next round and nothing else is touched.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from peakwise.operator.labels import FIELD_MANAGER


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

    def apply_deployment(self, manifest: dict[str, Any]) -> None:
        meta = manifest["metadata"]
        self.apps.patch_namespaced_deployment(
            meta["name"],
            meta["namespace"],
            manifest,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type="application/apply-patch+yaml",
        )

    def delete_deployment(self, namespace: str, name: str) -> None:
        try:
            self.apps.delete_namespaced_deployment(name, namespace)
        except ApiException as error:
            if error.status != 404:  # already gone: that is what we wanted
                raise

"""What a 403 becomes: the denied verb, resource and namespace, in the API server's words."""

import json

from kubernetes.client.exceptions import ApiException

from peakwise.operator.kube import forbidden


def _denied(message: str) -> ApiException:
    error = ApiException(status=403, reason="Forbidden")
    error.body = json.dumps(
        {"kind": "Status", "code": 403, "reason": "Forbidden", "message": message}
    )
    return error


def test_a_namespaced_denial_names_verb_resource_and_namespace() -> None:
    error = _denied(
        'deployments.apps "chat-h100" is forbidden: User "system:serviceaccount:pw:pw" cannot '
        'create resource "deployments" in API group "apps" in the namespace "team-a"'
    )
    found = forbidden(error, "patch", "deployments.apps", "team-a")
    # An apply that creates is authorised as `create`: the server's verb wins over ours.
    assert (found.verb, found.resource, found.namespace) == ("create", "deployments.apps", "team-a")
    assert str(found).startswith("the operator may not create deployments.apps in namespace team-a")
    assert "system:serviceaccount:pw:pw" in str(found)


def test_a_cluster_scoped_denial_says_so() -> None:
    error = _denied(
        'nodes is forbidden: User "system:serviceaccount:pw:pw" cannot create resource "nodes" '
        'in API group "" at the cluster scope'
    )
    found = forbidden(error, "create", "nodes")
    assert (found.verb, found.resource, found.namespace) == ("create", "nodes", None)
    assert "may not create nodes at the cluster scope" in str(found)


def test_without_the_servers_words_it_says_what_was_asked() -> None:
    error = ApiException(status=403, reason="Forbidden")
    found = forbidden(error, "delete", "deployments.apps", "team-b")
    assert str(found).startswith("the operator may not delete deployments.apps in namespace team-b")

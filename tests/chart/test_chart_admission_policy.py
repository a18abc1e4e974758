"""The chart's ValidatingAdmissionPolicy on the real API server: what a team may not ask of the
operator is rejected when it applies the InferenceDeployment, with the field in the message.

`helm install` of a release (``pwvap``) whose binding is limited to namespaces labelled
``peakwise-vap-test=true``, so the other end-to-end tests sharing the cluster are not
affected; every case of tests/template_cases.py is applied (server-side dry run) to such a
namespace. The same cases are the operator's own checks (tests/operator/test_template_policy.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from e2e.clusterfix import LocalCluster
from template_cases import ALLOWED_CASES, TEMPLATE_CASES, with_field

from chart.chartlib import CHART

pytestmark = pytest.mark.e2e

RELEASE, NS = "pwvap", "peakwise-vap"
TENANT, OUTSIDER = "vap-tenant", "vap-outsider"
SELECTOR = "peakwise-vap-test"


def _infd(namespace: str, template: dict[str, Any], name: str = "model") -> str:
    return json.dumps(
        {
            "apiVersion": "peakwise.dev/v1alpha1",
            "kind": "InferenceDeployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "template": template,
                "gpuProfiles": [{"gpuType": "nvidia-l40s-48gb", "throughputPerReplica": 10}],
                "demand": {"query": "vector(1)"},
            },
        }
    )


def _apply(cluster: LocalCluster, manifest: str, *extra: str) -> Any:
    return cluster.kubectl("apply", *extra, "-f", "-", stdin=manifest, check=False)


@pytest.fixture(scope="module")
def policy(cluster: LocalCluster) -> Iterator[LocalCluster]:
    cluster.kubectl("create", "namespace", TENANT)
    cluster.kubectl("label", "namespace", TENANT, f"{SELECTOR}=true")
    cluster.kubectl("create", "namespace", OUTSIDER)
    try:
        cluster.helm(
            *("install", RELEASE, str(CHART), "--namespace", NS, "--create-namespace"),
            *("--set", "userRoles.create=false"),
            *(
                "--set-string",
                f"tenancy.admissionPolicy.namespaceSelector.matchLabels.{SELECTOR}=true",
            ),
            *("--set", "tenancy.templatePolicy.allowedServiceAccounts={default,model-server}"),
        )
        # The API server starts enforcing a new policy within a few seconds.
        bad = _infd(TENANT, with_field("hostNetwork", True), "probe")
        deadline = time.monotonic() + 60
        while _apply(cluster, bad, "--dry-run=server").returncode == 0:
            assert time.monotonic() < deadline, "the admission policy never took effect"
            time.sleep(0.5)
        yield cluster
    finally:
        cluster.helm("uninstall", RELEASE, "--namespace", NS, check=False)
        cluster.kubectl(
            *("delete", "namespace", TENANT, OUTSIDER, NS, "--ignore-not-found", "--wait=false"),
            check=False,
        )


def test_the_policy_type_checks_against_the_crd(policy: LocalCluster) -> None:
    name = f"{RELEASE}-peakwise-template-policy"
    found = policy.kubectl_json("get", "validatingadmissionpolicy", name)
    # The API server compiled every expression and found no type error.
    assert found["status"].get("typeChecking", {}).get("expressionWarnings") is None
    binding = policy.kubectl_json("get", "validatingadmissionpolicybinding", name)
    assert binding["spec"]["validationActions"] == ["Deny"]


@pytest.mark.parametrize(
    ("case", "template", "_", "message"), TEMPLATE_CASES, ids=[c[0] for c in TEMPLATE_CASES]
)
def test_a_template_the_team_could_not_run_itself_is_denied(
    policy: LocalCluster, case: str, template: dict[str, Any], _: str, message: str
) -> None:
    proc = _apply(policy, _infd(TENANT, template), "--dry-run=server")
    assert proc.returncode != 0, f"{case} was admitted"
    assert "denied request" in proc.stderr, proc.stderr
    assert message in proc.stderr, proc.stderr


@pytest.mark.parametrize(("case", "template"), ALLOWED_CASES, ids=[c[0] for c in ALLOWED_CASES])
def test_ordinary_templates_are_admitted(
    policy: LocalCluster, case: str, template: dict[str, Any]
) -> None:
    proc = _apply(policy, _infd(TENANT, template), "--dry-run=server")
    assert proc.returncode == 0, proc.stderr


def test_the_allowlists_come_from_the_chart_values(policy: LocalCluster) -> None:
    allowed = _apply(
        policy, _infd(TENANT, with_field("serviceAccountName", "model-server")), "--dry-run=server"
    )
    assert allowed.returncode == 0, allowed.stderr
    denied = _apply(
        policy, _infd(TENANT, with_field("serviceAccountName", "admin")), "--dry-run=server"
    )
    assert "allowed: default, model-server" in denied.stderr


def test_an_update_is_checked_too_and_status_writes_are_not(policy: LocalCluster) -> None:
    good = _infd(TENANT, with_field("serviceAccountName", "default"), "updated")
    assert _apply(policy, good).returncode == 0
    try:
        patch = json.dumps({"spec": {"template": with_field("hostPID", True)}})
        proc = policy.kubectl(
            *("patch", "infd", "updated", "-n", TENANT, "--type=merge", "-p", patch),
            check=False,
        )
        assert proc.returncode != 0 and "hostPID" in proc.stderr
        # The operator writes status through the subresource, which the policy does not match.
        status = json.dumps({"status": {"replicas": 0}})
        proc = policy.kubectl(
            *("patch", "infd", "updated", "-n", TENANT, "--subresource=status"),
            *("--type=merge", "-p", status),
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
    finally:
        policy.kubectl("delete", "infd", "updated", "-n", TENANT, "--wait=false", check=False)


def test_namespaces_outside_the_selector_are_not_checked(policy: LocalCluster) -> None:
    proc = _apply(policy, _infd(OUTSIDER, with_field("hostNetwork", True)), "--dry-run=server")
    assert proc.returncode == 0, proc.stderr

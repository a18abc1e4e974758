"""The tenancy admission policy as the chart renders it (the real API server's view of it is
tests/chart/test_chart_admission_policy.py)."""

from __future__ import annotations

import json

from chart.chartlib import FULL_VALUES, named, of_kind, template
from peakwise.operator.template_policy import TemplatePolicy

POLICY = "pw-peakwise-template-policy"


def _variables(manifests: list[dict[str, object]]) -> dict[str, str]:
    policy = named(manifests, "ValidatingAdmissionPolicy", POLICY)
    return {v["name"]: v["expression"] for v in policy["spec"]["variables"]}  # type: ignore[index]


def test_the_chart_defaults_are_the_operators_defaults() -> None:
    """One policy, two enforcers: the admission policy's allowlists by default are those the
    operator checks when it is given none."""
    variables = _variables(template())
    default = TemplatePolicy()
    assert set(json.loads(variables["allowedServiceAccounts"])) == default.service_accounts
    assert set(json.loads(variables["allowedPriorityClasses"])) == default.priority_classes
    assert set(json.loads(variables["allowedTolerationKeys"])) == default.toleration_keys
    assert set(json.loads(variables["allowedCapabilities"])) == default.capabilities
    assert tuple(json.loads(variables["acceleratorPrefixes"])) == default.accelerator_prefixes


def test_the_policy_denies_every_inference_deployment_write_by_default() -> None:
    manifests = template()
    policy = named(manifests, "ValidatingAdmissionPolicy", POLICY)
    assert policy["spec"]["failurePolicy"] == "Fail"
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule == {
        "apiGroups": ["peakwise.dev"],
        "apiVersions": ["v1alpha1"],
        "operations": ["CREATE", "UPDATE"],
        "resources": ["inferencedeployments"],  # not inferencedeployments/status
    }
    binding = named(manifests, "ValidatingAdmissionPolicyBinding", POLICY)
    assert binding["spec"]["policyName"] == POLICY
    assert binding["spec"]["validationActions"] == ["Deny"]
    for validation in policy["spec"]["validations"]:
        text = validation.get("message") or validation["messageExpression"]
        assert "spec.template.spec" in text, validation


def test_allowlists_and_namespaces_come_from_the_values() -> None:
    manifests = template(FULL_VALUES)
    policy = named(manifests, "ValidatingAdmissionPolicy", "peakwise-operator-template-policy")
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    assert json.loads(variables["allowedServiceAccounts"]) == ["default", "model-server"]
    assert json.loads(variables["acceleratorPrefixes"]) == ["nvidia.com/", "amd.com/"]
    binding = named(
        manifests, "ValidatingAdmissionPolicyBinding", "peakwise-operator-template-policy"
    )
    assert binding["spec"]["validationActions"] == ["Warn", "Audit"]
    selector = binding["spec"]["matchResources"]["namespaceSelector"]
    assert selector["matchLabels"] == {"peakwise.dev/tenant": "true"}


def test_the_policy_can_be_left_out() -> None:
    manifests = template(sets=["tenancy.admissionPolicy.enabled=false"])
    assert of_kind(manifests, "ValidatingAdmissionPolicy") == []
    assert of_kind(manifests, "ValidatingAdmissionPolicyBinding") == []

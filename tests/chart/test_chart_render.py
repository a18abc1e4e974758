"""The chart without a cluster: lint, schema, rendered manifests, CRDs, RBAC, dashboard."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from chart.chartlib import CHART, FULL_VALUES, REPO_ROOT, Manifest, helm, named, of_kind, template
from peakwise.api.crdgen import crd_files

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())
FULL = yaml.safe_load(FULL_VALUES.read_text())
READ_VERBS = {"get", "list", "watch"}
WRITE_VERBS = {"create", "update", "patch", "delete"}
Perm = tuple[str, str, str]  # (apiGroup, resource, verb)


@pytest.fixture(scope="module")
def default() -> list[Manifest]:
    return template()


@pytest.fixture(scope="module")
def full() -> list[Manifest]:
    return template(FULL_VALUES)


# --- lint and schema --------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["default", "full"])
def test_helm_lint_strict(values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART)] + (["--values", str(values)] if values else [])
    proc = helm(*args)
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ("watchNamespace: [team-a]\n", "additional properties 'watchNamespace' not allowed"),
        ("resources:\n  requests:\n    cpus: 1\n", "'/resources/requests'"),
        ("peering:\n  enable: true\n", "additional properties 'enable' not allowed"),
        ("providers:\n  kwok:\n    enabled: yes please\n", "/providers/kwok/enabled"),
        ("updateStrategy: BlueGreen\n", "/updateStrategy"),
        ("replicaCount: 0\n", "/replicaCount"),
        ("prometheus:\n  url: prometheus:9090\n", "/prometheus/url"),
        ("operator:\n  interval: 30 seconds\n", "/operator/interval"),
        # The operator refuses these at start (operator/tenancy_flags.py); caught at install.
        ("tenancy:\n  defaultBudget:\n    hourly: 5\n", "'/tenancy/unbudgeted': value must be"),
        ("tenancy:\n  unbudgeted: DefaultBudget\n", "'/tenancy/defaultBudget/hourly': got null"),
    ],
)
def test_a_typo_in_values_fails_template_naming_the_key(
    tmp_path: Path, values: str, message: str
) -> None:
    bad = tmp_path / "values.yaml"
    bad.write_text(values)
    proc = helm("template", "pw", str(CHART), "--values", str(bad), check=False)
    assert proc.returncode != 0, proc.stdout
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


# Objects whose content is Kubernetes' own API, validated by the API server.
PASSTHROUGH = {
    "global",
    "operator.extraEnv[].valueFrom",
    "affinity.nodeAffinity",
    "affinity.podAffinity",
    "affinity.podAntiAffinity",
}


def _objects(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    for key in ("anyOf", "oneOf", "allOf"):
        for child in node.get(key, []):
            yield from _objects(child, path)
    if node.get("type") == "object":
        yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _objects(child, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), dict):
        yield from _objects(node["items"], f"{path}[]")


def test_schema_closes_every_object() -> None:
    open_objects = []
    for path, node in _objects(SCHEMA):
        if path in PASSTHROUGH:
            continue
        extra = node.get("additionalProperties")
        closed = extra is False and "properties" in node
        string_map = extra == {"type": "string"}
        if not (closed or string_map):
            open_objects.append(path or "<root>")
    assert open_objects == []


def _keys(values: Any, schema: dict[str, Any], path: str = "") -> set[str]:
    """Dotted paths of the values that the schema describes as closed objects."""
    found = set()
    if isinstance(values, dict) and schema.get("additionalProperties") is False:
        for key, value in values.items():
            child = f"{path}.{key}" if path else key
            found.add(child)
            found |= _keys(value, schema["properties"].get(key, {}), child)
    return found


def _schema_keys(schema: dict[str, Any], path: str = "") -> set[str]:
    found = set()
    if schema.get("additionalProperties") is False:
        for key, child in schema["properties"].items():
            child_path = f"{path}.{key}" if path else key
            found.add(child_path)
            found |= _schema_keys(child, child_path)
    return found


def test_values_yaml_documents_every_option_and_the_full_file_sets_them_all() -> None:
    every = _schema_keys(SCHEMA) - {"global"}
    # values.yaml documents every option (affinity's sub-keys are optional examples)
    documented = _keys(DEFAULTS, SCHEMA)
    assert every - documented == {
        "affinity.nodeAffinity",
        "affinity.podAffinity",
        "affinity.podAntiAffinity",
        "resources.requests.ephemeral-storage",
        "resources.limits.ephemeral-storage",
    }
    assert documented <= every
    missing_in_full = every - _keys(FULL, SCHEMA)
    assert missing_in_full <= {
        "affinity.nodeAffinity",
        "affinity.podAffinity",
        "resources.limits.ephemeral-storage",
    }


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["replicaCount=2"], "replicaCount > 1 needs peering.enabled"),
        (["updateStrategy=RollingUpdate"], "RollingUpdate needs peering.enabled"),
        (
            ["peering.enabled=true", "replicaCount=3", "peering.priority=10"],
            "must not be negative",
        ),
    ],
)
def test_unsafe_combinations_fail_with_a_reason(sets: list[str], message: str) -> None:
    args = ["template", "pw", str(CHART)]
    for item in sets:
        args += ["--set", item]
    proc = helm(*args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr


# --- CRDs -----------------------------------------------------------------------------


def test_chart_crds_are_generated_from_the_models() -> None:
    """Regenerate with `peakwise crds --out charts/peakwise/crds`."""
    committed = {path.name: path.read_text() for path in (CHART / "crds").glob("*.yaml")}
    assert committed == crd_files(), "run `peakwise crds --out charts/peakwise/crds`"
    top_level = {path.name: path.read_text() for path in (REPO_ROOT / "crds").glob("*.yaml")}
    assert committed == top_level


# --- the operator Deployment ----------------------------------------------------------


def _container(deployment: Manifest) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _check_restricted(deployment: Manifest) -> None:
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    ctx = _container(deployment)["securityContext"]
    assert ctx["runAsNonRoot"] is True
    assert ctx["runAsUser"] == 65532
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert "add" not in ctx["capabilities"]
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in _container(deployment)["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_default_deployment(default: list[Manifest]) -> None:
    (deployment,) = of_kind(default, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    _check_restricted(deployment)
    container = _container(deployment)
    assert container["image"] == "peakwise:0.1.0"
    assert container["args"][:2] == ["operator", "run"]
    assert "--metrics-port=8080" in container["args"]
    assert "--liveness-port=8081" in container["args"]
    assert not any(
        a.startswith(("--namespace", "--peering", "--priority")) for a in container["args"]
    )
    assert "--no-commitment-advice" not in container["args"]  # the advice is on by default
    probe = container["livenessProbe"]
    assert probe["httpGet"] == {"path": "/healthz", "port": "liveness"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "liveness": 8081}
    assert set(container["resources"]) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    assert named(default, "ServiceAccount", sa)


def test_peered_instances_have_distinct_priorities(full: list[Manifest]) -> None:
    deployments = of_kind(full, "Deployment")
    assert [d["metadata"]["name"] for d in deployments] == [
        "peakwise-operator",
        "peakwise-operator-1",
        "peakwise-operator-2",
    ]
    priorities = []
    selectors = []
    for deployment in deployments:
        _check_restricted(deployment)
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"] == {"type": "RollingUpdate"}
        args = _container(deployment)["args"]
        assert "--peering=peakwise-ha" in args
        assert "--no-commitment-advice" in args  # operator.commitmentAdvice: false
        assert "--namespace=team-a" in args and "--namespace=team-b" in args
        (priority,) = [int(a.split("=")[1]) for a in args if a.startswith("--priority=")]
        priorities.append(priority)
        selectors.append(json.dumps(deployment["spec"]["selector"], sort_keys=True))
        assert _container(deployment)["image"].endswith("@sha256:" + "0123456789abcdef" * 4)
    assert priorities == [200, 150, 100]
    assert len(set(selectors)) == 3, "each Deployment selects only its own pod"


def test_metrics_service_selects_every_operator_pod(full: list[Manifest]) -> None:
    (service,) = of_kind(full, "Service")
    selector = service["spec"]["selector"].items()
    for deployment in of_kind(full, "Deployment"):
        assert selector <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    (monitor,) = of_kind(full, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_optional_objects_are_off_by_default(default: list[Manifest]) -> None:
    kinds = {m["kind"] for m in default}
    assert kinds == {
        "Deployment",
        "ServiceAccount",
        "Service",
        "ClusterRole",
        "ClusterRoleBinding",
        # The template policy is on by default (tests/chart/test_chart_admission_policy.py).
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }


def test_peering_crds_and_objects(full: list[Manifest]) -> None:
    crds = {m["metadata"]["name"]: m for m in of_kind(full, "CustomResourceDefinition")}
    assert set(crds) == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    assert crds["clusterkopfpeerings.kopf.dev"]["spec"]["scope"] == "Cluster"
    assert crds["kopfpeerings.kopf.dev"]["spec"]["scope"] == "Namespaced"
    for crd in crds.values():
        (version,) = crd["spec"]["versions"]
        assert version["name"] == "v1"
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["x-kubernetes-preserve-unknown-fields"] is True
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    peerings = of_kind(full, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    for peering in peerings:
        assert peering["metadata"]["name"] == "peakwise-ha"
        assert "post-install" in peering["metadata"]["annotations"]["helm.sh/hook"]
    clusterwide = template(sets=["peering.enabled=true", "replicaCount=2"])
    (peering,) = of_kind(clusterwide, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "peakwise"


# --- RBAC -----------------------------------------------------------------------------


def _roles(manifests: list[Manifest]) -> list[Manifest]:
    return of_kind(manifests, "ClusterRole") + of_kind(manifests, "Role")


def _perms(role: Manifest) -> set[Perm]:
    return {
        (group, resource, verb)
        for rule in role.get("rules") or []
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _operator_perms(manifests: list[Manifest], sa: str) -> dict[str, set[Perm]]:
    """Permissions bound to the operator's ServiceAccount, per namespace ('' = cluster)."""
    roles = {
        (r["kind"], r["metadata"].get("namespace", ""), r["metadata"]["name"]): r
        for r in _roles(manifests)
    }
    granted: dict[str, set[Perm]] = {}
    for binding in of_kind(manifests, "ClusterRoleBinding") + of_kind(manifests, "RoleBinding"):
        if not any(s["kind"] == "ServiceAccount" and s["name"] == sa for s in binding["subjects"]):
            continue
        namespace = binding["metadata"].get("namespace", "")
        ref = binding["roleRef"]
        role_ns = namespace if ref["kind"] == "Role" else ""
        granted.setdefault(namespace, set()).update(
            _perms(roles[(ref["kind"], role_ns, ref["name"])])
        )
    return granted


@pytest.mark.parametrize("which", ["default", "full"])
def test_no_wildcards_and_reads_separated_from_writes(
    which: str, default: list[Manifest], full: list[Manifest]
) -> None:
    manifests = default if which == "default" else full
    for role in _roles(manifests):
        name = role["metadata"]["name"]
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], f"{name}: wildcard in {key}"
            assert "resourceNames" not in rule or rule["resourceNames"]
            assert "nonResourceURLs" not in rule
        perms = _perms(role)
        assert not any(r in {"secrets", "configmaps"} for _, r, _ in perms), name
        assert not any(v in {"escalate", "bind", "impersonate"} for _, _, v in perms), name
        if name.endswith("-read"):
            assert {v for _, _, v in perms} <= READ_VERBS, name
        elif name.endswith("-write"):
            assert {v for _, _, v in perms} <= WRITE_VERBS, name
        else:
            assert name.startswith("peakwise-"), f"{name}: operator roles end in -read/-write"


NS_READ: set[Perm] = {
    *(("peakwise.dev", r, v) for r in ("inferencedeployments", "costbudgets") for v in READ_VERBS),
    ("peakwise.dev", "inferencedeployments/status", "get"),
    ("peakwise.dev", "costbudgets/status", "get"),
    *(("apps", "deployments", v) for v in READ_VERBS),
    *(("", "pods", v) for v in READ_VERBS),
    ("apps", "statefulsets", "get"),
    ("leaderworkerset.x-k8s.io", "leaderworkersets", "get"),
    ("autoscaling", "horizontalpodautoscalers", "list"),
    ("keda.sh", "scaledobjects", "list"),
}
EVENTS: set[Perm] = {(g, "events", v) for g in ("", "events.k8s.io") for v in ("create", "patch")}
NS_WRITE: set[Perm] = {
    ("peakwise.dev", "inferencedeployments", "patch"),
    ("peakwise.dev", "costbudgets", "patch"),
    *(
        ("peakwise.dev", f"{r}/status", v)
        for r in ("inferencedeployments", "costbudgets")
        for v in ("patch", "update")
    ),
    *(("apps", "deployments", v) for v in WRITE_VERBS),
    ("apps", "deployments/scale", "patch"),
    ("apps", "statefulsets/scale", "patch"),
    ("leaderworkerset.x-k8s.io", "leaderworkersets/scale", "patch"),
    *EVENTS,
}
CLUSTER: set[Perm] = {
    *(("apiextensions.k8s.io", "customresourcedefinitions", v) for v in READ_VERBS),
    *(("", "namespaces", v) for v in READ_VERBS),
    *(("", "nodes", v) for v in READ_VERBS),
    *(("peakwise.dev", "gpunodepools", v) for v in (*READ_VERBS, "patch")),
    *(("peakwise.dev", "gpunodepools/status", v) for v in ("get", "patch", "update")),
}


def test_default_operator_permissions_are_exactly_what_it_needs(default: list[Manifest]) -> None:
    granted = _operator_perms(default, "pw-peakwise")
    assert granted == {"": CLUSTER | NS_READ | NS_WRITE}


def test_watch_namespaces_narrows_namespaced_permissions_to_roles(full: list[Manifest]) -> None:
    granted = _operator_perms(full, "peakwise-sa")
    peering_ns = {("kopf.dev", "kopfpeerings", v) for v in (*READ_VERBS, "patch")}
    capi = {
        *(("cluster.x-k8s.io", "machinedeployments", v) for v in READ_VERBS),
        *(("cluster.x-k8s.io", "machinedeployments/scale", v) for v in ("get", "patch", "update")),
    }
    kwok = {("", "nodes", v) for v in ("create", "patch", "delete")}
    karpenter = {("karpenter.sh", "nodepools", v) for v in (*READ_VERBS, "patch")}
    assert granted == {
        "": CLUSTER | kwok | karpenter,
        "team-a": NS_READ | NS_WRITE | peering_ns,
        "team-b": NS_READ | NS_WRITE | peering_ns,
        "default": EVENTS,
        "capi-system": capi,
    }


def test_providers_and_peering_add_their_permissions_only_when_enabled() -> None:
    clusterwide = template(
        sets=[
            "providers.kwok.enabled=true",
            "providers.clusterAPI.enabled=true",
            "peering.enabled=true",
        ]
    )
    granted = _operator_perms(clusterwide, "pw-peakwise")
    assert set(granted) == {""}
    extra = granted[""] - (CLUSTER | NS_READ | NS_WRITE)
    assert extra == {
        *(("", "nodes", v) for v in ("create", "patch", "delete")),
        *(("cluster.x-k8s.io", "machinedeployments", v) for v in READ_VERBS),
        *(("cluster.x-k8s.io", "machinedeployments/scale", v) for v in ("get", "patch", "update")),
        *(("kopf.dev", "clusterkopfpeerings", v) for v in (*READ_VERBS, "patch")),
    }


def test_user_roles_keep_budgets_with_the_platform_team(default: list[Manifest]) -> None:
    admin = named(default, "ClusterRole", "peakwise-platform-admin")
    team = named(default, "ClusterRole", "peakwise-app-team")
    view = named(default, "ClusterRole", "peakwise-view")

    def verbs(role: Manifest, resource: str) -> set[str]:
        return {v for g, r, v in _perms(role) if g == "peakwise.dev" and r == resource}

    for resource in ("costbudgets", "gpunodepools", "costbudgets/status", "gpunodepools/status"):
        assert verbs(team, resource) <= READ_VERBS, resource
        assert verbs(view, resource) <= READ_VERBS, resource
    assert verbs(team, "costbudgets") == READ_VERBS
    assert verbs(team, "inferencedeployments") >= {*READ_VERBS, *WRITE_VERBS}
    assert verbs(team, "inferencedeployments/scale") >= {"update", "patch"}
    assert verbs(team, "inferencedeployments/status") == {"get"}, "status is the operator's"
    for resource in ("costbudgets", "gpunodepools"):
        assert verbs(admin, resource) >= {*READ_VERBS, *WRITE_VERBS}
        assert verbs(admin, f"{resource}/status") == {"get"}, "status is the operator's"
    assert verbs(admin, "inferencedeployments") == READ_VERBS

    def aggregates(role: Manifest) -> set[str]:
        prefix = "rbac.authorization.k8s.io/aggregate-to-"
        labels = role["metadata"]["labels"]
        return {
            k.removeprefix(prefix)
            for k, v in labels.items()
            if k.startswith(prefix) and v == "true"
        }

    assert aggregates(admin) == set(), "no namespace admin may raise a budget"
    assert aggregates(team) == {"admin", "edit"}
    assert aggregates(view) == {"view"}
    # No role aggregated into admin/edit/view writes budgets or pools.
    for role in _roles(default):
        if aggregates(role):
            for resource in ("costbudgets", "gpunodepools"):
                assert verbs(role, resource) <= READ_VERBS


def test_user_roles_can_be_left_out() -> None:
    names = {r["metadata"]["name"] for r in _roles(template(sets=["userRoles.create=false"]))}
    assert not any(name.startswith("peakwise-") for name in names)


# --- dashboard ------------------------------------------------------------------------

METRICS = [
    "peakwise_demand_forecast",
    "peakwise_demand_actual",
    "peakwise_replicas",
    "peakwise_desired_replicas",
    "peakwise_cost_hourly",
    "peakwise_budget_spend",
    "peakwise_budget_limit_hourly",
    "peakwise_budget_headroom_hourly",
]


def test_grafana_dashboard_shows_forecast_replicas_and_spend(full: list[Manifest]) -> None:
    (configmap,) = of_kind(full, "ConfigMap")
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["peakwise.json"])
    panels = {p["title"]: p for p in dashboard["panels"] if p["type"] != "row"}
    exprs = {title: " ".join(t["expr"] for t in p["targets"]) for title, p in panels.items()}
    every = " ".join(exprs.values())
    for metric in METRICS:
        assert f"{metric}{{" in every, metric
    forecast = exprs["Forecast vs actual demand"]
    assert "peakwise_demand_forecast" in forecast and "peakwise_demand_actual" in forecast
    assert "sum by (tier)" in exprs["Replicas by capacity tier"]
    assert "by (pool, tier)" in exprs["Replicas by pool"]
    spend = exprs["Spend rate vs hourly budget ($/h)"]
    assert "by (namespace) (peakwise_cost_hourly" in spend
    assert "peakwise_budget_limit_hourly" in spend
    for panel in panels.values():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert 'namespace=~"$namespace"' in exprs[panel["title"]]
        assert panel["gridPos"]["w"] <= 24
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "deployment"} <= variables
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))

"""The generated CRDs and the examples on a real API server: what `kubectl apply` users meet.

The CRDs install and are served, the examples apply, `kubectl explain` shows the field docs,
and every invalid manifest of tests/api/invalid is rejected by the server's schema or CEL
rules with the message the models give for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.clusterfix import LocalCluster

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
INVALID = sorted((REPO / "tests" / "api" / "invalid").glob("*.yaml"))


@pytest.fixture(scope="module")
def served(cluster: LocalCluster) -> Iterator[LocalCluster]:
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    yield cluster


def test_examples_apply(served: LocalCluster) -> None:
    try:
        served.kubectl("apply", "-f", str(REPO / "examples"))
        infds = served.kubectl_json("get", "inferencedeployments", "-A")["items"]
        pools = served.kubectl_json("get", "gpunodepools")["items"]
        budgets = served.kubectl_json("get", "costbudgets", "-A")["items"]
        assert {i["metadata"]["namespace"] for i in infds} == {"chat", "search"}
        assert {p["spec"]["capacityType"] for p in pools} >= {"reserved", "spot", "onDemand"}
        assert len(budgets) == 2
        # Defaults from the models are filled in by the server.
        assistant = next(i for i in infds if i["metadata"]["name"] == "assistant")
        assert assistant["spec"]["scaleDown"]["stabilizationWindow"]
        # The printer columns answer.
        table = served.kubectl("get", "inferencedeployments", "-A").stdout
        for column in ("MODE", "REPLICAS", "TIERS", "PEAK", "$/H", "BUDGET"):
            assert column in table
    finally:
        served.kubectl(
            "delete",
            "-f",
            str(REPO / "examples"),
            "--ignore-not-found",
            "--wait=false",
            check=False,
        )


def test_kubectl_explain_shows_the_field_docs(served: LocalCluster) -> None:
    text = served.kubectl("explain", "inferencedeployment.spec").stdout
    assert "gpuProfiles" in text
    assert "Acceptable GPU shapes" in text
    text = served.kubectl("explain", "gpunodepool.spec.reservedNodes").stdout
    assert "Nodes already paid for" in text


def _expected(path: Path) -> list[str]:
    return [
        line.split(":", 1)[1].strip()
        for line in path.read_text().splitlines()
        if line.startswith("# expect:")
    ]


@pytest.mark.parametrize("manifest", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_manifests_are_rejected_by_the_server(served: LocalCluster, manifest: Path) -> None:
    # Server-side dry run: the API server validates (schema, CEL) and stores nothing.
    proc = served.kubectl("apply", "--dry-run=server", "-f", str(manifest), check=False)
    assert proc.returncode != 0, f"{manifest.name} was accepted"
    for text in _expected(manifest):
        assert text in proc.stderr, f"{manifest.name}: {text!r} not in {proc.stderr!r}"

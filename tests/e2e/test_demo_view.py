"""`peakwise demo-view --once` against the local cluster: the rows come from status and Events.

No operator runs here: the objects' status is written by hand through the status
subresource (as the operator would), and one Event is recorded for the InferenceDeployment.
Names (namespace `dv-team`, pool `dv-pool`) do not collide with the other tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from e2e.clusterfix import LocalCluster

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NS = "dv-team"
POOL = "dv-pool"


@pytest.fixture(scope="module")
def objects(cluster: LocalCluster) -> Iterator[LocalCluster]:
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    cluster.kubectl("create", "namespace", NS)
    docs = [
        {
            "apiVersion": "peakwise.dev/v1alpha1",
            "kind": "GPUNodePool",
            "metadata": {"name": POOL},
            "spec": {
                "gpuType": "dv-gpu",
                "gpusPerNode": 4,
                "capacityType": "spot",
                "pricePerNodeHour": 3.5,
                "maxNodes": 4,
                "provider": {"kwok": {}},
            },
        },
        {
            "apiVersion": "peakwise.dev/v1alpha1",
            "kind": "CostBudget",
            "metadata": {"name": "dv-budget", "namespace": NS},
            "spec": {"limits": {"hourly": 50}, "enforcement": "Soft"},
        },
        {
            "apiVersion": "peakwise.dev/v1alpha1",
            "kind": "InferenceDeployment",
            "metadata": {"name": "dv-chat", "namespace": NS},
            "spec": {
                "mode": "Enforce",
                "template": {"spec": {"containers": [{"name": "s", "image": "dv/server:1"}]}},
                "gpuProfiles": [{"gpuType": "dv-gpu", "throughputPerReplica": 10}],
                "demand": {"query": "vector(42)"},
            },
        },
    ]
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
    peak_at = (datetime.now(UTC) + timedelta(minutes=12)).isoformat()
    statuses = [
        (
            ("infd", "dv-chat", "-n", NS),
            {
                "replicas": 5,
                "desiredReplicas": 7,
                "tiers": "reserved=0 spot=7 onDemand=0",
                "pools": [
                    {
                        "pool": POOL,
                        "capacityType": "spot",
                        "gpuType": "dv-gpu",
                        "replicas": 5,
                        "desiredReplicas": 7,
                    }
                ],
                "forecast": {"peak": 63.5, "peakAt": peak_at, "quantile": 0.95, "model": "m"},
                "cost": {"hourly": 12.25, "currency": "USD"},
                "budgetState": "Within",
            },
        ),
        (
            ("costbudget", "dv-budget", "-n", NS),
            {"hourlySpend": 12.0, "spend": 3.5, "state": "Within"},
        ),
        (("gpunodepool", POOL), {"nodes": 2, "readyNodes": 2, "desiredNodes": 2}),
    ]
    for target, status in statuses:
        cluster.kubectl(
            "patch",
            *target,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": status}),
        )
    uid = cluster.kubectl_json("get", "infd", "dv-chat", "-n", NS)["metadata"]["uid"]
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "dv-chat.scale", "namespace": NS},
        "involvedObject": {
            "apiVersion": "peakwise.dev/v1alpha1",
            "kind": "InferenceDeployment",
            "name": "dv-chat",
            "namespace": NS,
            "uid": uid,
        },
        "type": "Normal",
        "reason": "ScaleReplicas",
        "message": "scale up 5 → 7 replicas; forecast peak 63.5/s ahead of the evening peak",
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "source": {"component": "kopf"},
    }
    cluster.kubectl("create", "-f", "-", stdin=json.dumps(event))
    try:
        yield cluster
    finally:
        cluster.kubectl("delete", "namespace", NS, "--ignore-not-found", "--wait=false")
        cluster.kubectl("delete", "gpunodepool", POOL, "--ignore-not-found")


def test_once_prints_the_rows(objects: LocalCluster) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "peakwise",
            "demo-view",
            "--kubeconfig",
            objects.kubeconfig,
            "--prometheus-url",
            objects.prometheus_url,
            "--once",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "COLUMNS": "160"},
    )
    out = proc.stdout
    assert "\033[" not in out  # not a terminal: no colour codes
    lines = out.splitlines()
    (row,) = [line for line in lines if line.startswith(f"{NS}/dv-chat ")]
    cells = row.split()
    # service, mode, demand now (vector(42) from the real Prometheus), peak, window, ready/plan,
    # reserved, spot, on-demand, $/h, budget, state
    assert cells[1] == "Enforce"
    assert cells[2] == "42.0/s"
    assert cells[3] == "63.5/s"
    assert "(in 12m)" in row or "(in 11m)" in row
    assert "5/7" in cells
    assert cells[-6:-3] == ["0", "7", "0"]
    assert "$12.25" in cells
    (budget,) = [line for line in lines if line.startswith(f"{NS}/dv-budget ")]
    assert "Soft" in budget and "$50.00" in budget and "24%" in budget
    (pool,) = [line for line in lines if line.startswith(f"{POOL} ")]
    assert pool.split()[:5] == [POOL, "spot", "dv-gpu", "2/2", "2"]
    at = out.index("Latest decisions")
    assert f"{NS}/dv-chat  ScaleReplicas" in out[at:]
    assert "scale up 5 → 7 replicas" in out[at:]

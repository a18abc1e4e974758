"""The fleet backtest and the commitment advice from the real sources.

The example fleet (examples/fleet/: six services in three namespaces on five pools) replays
from the local cluster's Prometheus, backfilled with one synthetic trace per service, and
its objects come either from the manifests or from the real API server holding them
(`--from-cluster`). The HTML report is opened in Debian's headless Chromium. The operator,
run against the same cluster, writes the advice into GPUNodePool.status, and it is the
advice `peakwise.backtest.advice` gives on the same history.

Everything this module creates in the shared cluster (namespaces, pools) is deleted at the
end, so the other e2e modules never see it.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.browser import open_page
from e2e.clusterfix import LocalCluster
from e2e.operatorproc import OperatorProcess
from e2e.polling import wait_for
from peakwise.adapters.prometheus import PrometheusHistory
from peakwise.backtest.fleet import FleetOptions, align, fleet_advice, parse_fleet
from peakwise.trace import synthesize_family, write_trace_csv

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "fleet"
DAYS = 3
SERVICES = {
    # service label (the example queries select it): trace family, peak requests a minute
    "assistant": ("weekly", 3000),
    "assistant-70b": ("growth", 400),
    "query-rewriter": ("spikes", 600),
    "embedder": ("growth", 6000),
    "summarizer": ("weekly", 600),
    "helpdesk": ("spikes", 1200),
}
NAMESPACES = ("chat", "search", "support")
CSV_COLUMNS = (
    "timestamp",
    "demand",
    "forecast",
    "capacity",
    "replicas_reserved",
    "replicas_spot",
    "replicas_on_demand",
    "cost_usd",
)


@dataclass(frozen=True)
class History:
    end: str
    """The end every command replays up to (ISO 8601, the last backfilled minute)."""


def _documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(EXAMPLE.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _pool_names() -> list[str]:
    return [d["metadata"]["name"] for d in _documents() if d["kind"] == "GPUNodePool"]


@pytest.fixture(scope="module")
def history(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> History:
    """Each example service's demand in the cluster's Prometheus: DAYS of a synthetic trace."""
    work = tmp_path_factory.mktemp("fleet-traces")
    ends = []
    for i, (label, (family, peak)) in enumerate(SERVICES.items()):
        table = synthesize_family(family, DAYS, seed=200 + i, peak_requests_per_minute=peak)
        path = write_trace_csv(work / f"{label}.csv", table)
        ends.append(cluster.backfill_trace(path, f"service={label}").end)
    end = datetime.fromtimestamp(min(ends), UTC)
    return History(end.strftime("%Y-%m-%dT%H:%M:%SZ"))


@pytest.fixture(scope="module")
def fleet_in_cluster(cluster: LocalCluster, history: History) -> Iterator[None]:
    """The example fleet's objects in the API server (CRDs of crds/); removed afterwards."""
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    cluster.kubectl("apply", "-f", str(EXAMPLE))
    try:
        yield
    finally:
        _remove_fleet(cluster)


def _remove_fleet(cluster: LocalCluster) -> None:
    """Every object of the example fleet gone, whatever failed before: the operator of one
    test put its finalizers on them and is stopped now, so they are dropped first."""
    unpin = ("--type=merge", "-p", '{"metadata":{"finalizers":null}}')
    failures = []
    for name in _pool_names():
        done = cluster.kubectl("patch", "gpunodepool", name, *unpin, check=False)
        if done.returncode != 0 and "NotFound" not in done.stderr:
            failures.append(done.stderr)
    for ns in NAMESPACES:
        for kind in ("inferencedeployments", "costbudgets"):
            found = cluster.kubectl("get", kind, "-n", ns, "-o", "name", check=False)
            for item in found.stdout.split():
                cluster.kubectl("patch", item, "-n", ns, *unpin, check=False)
    for args in (
        ("gpunodepool", *_pool_names()),
        ("node", "-l", f"peakwise.dev/pool in ({','.join(_pool_names())})"),
        ("namespace", *NAMESPACES, "--timeout=170s"),
    ):
        done = cluster.kubectl("delete", *args, "--ignore-not-found", check=False, timeout=180)
        if done.returncode != 0:
            failures.append(done.stderr)
    assert failures == [], failures


def _peakwise(*args: str, kubeconfig: str | None = None) -> subprocess.CompletedProcess[str]:
    env_args = ["--kubeconfig", kubeconfig] if kubeconfig else []
    return subprocess.run(
        [sys.executable, "-m", "peakwise", *args, *env_args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def _backtest(cluster: LocalCluster, history: History, out: Path, *source: str) -> str:
    proc = _peakwise(
        "backtest",
        *("--prometheus-url", cluster.prometheus_url, *source),
        *("--history", f"{DAYS}d", "--end", history.end, "--warmup", "1d"),
        *("--out", str(out / "csv"), "--report", str(out / "report.html")),
        *("--api-price-per-million", "0.6", "--spot-interruptions", "0.02"),
        *("--reserved-price", "1y=62", "--reserved-price", "3y=42.5"),
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _table_rows(stdout: str, scope_title: str) -> list[str]:
    """The rows of one scope's table (its title line to the next blank line)."""
    lines = stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if scope_title in line)
    rows = []
    for line in lines[at + 1 :]:
        if not line.strip():
            break
        rows.append(line)
    return rows


def test_the_fleet_replays_from_prometheus_and_manifests(
    cluster: LocalCluster, history: History, tmp_path: Path
) -> None:
    stdout = _backtest(cluster, history, tmp_path, "--manifests", str(EXAMPLE))
    # A table per namespace and one for the fleet, every policy in each.
    for scope in (*(f"Namespace {ns}:" for ns in NAMESPACES), "Fleet: 6 services"):
        rows = "\n".join(_table_rows(stdout, scope))
        for policy in ("static-peak", "reactive-tuned", "peakwise", "oracle"):
            assert policy in rows, f"{policy} missing from {scope}"
    # The per-minute CSVs of the output contract, per service and policy, over DAYS.
    for ns, name in (("chat", "assistant"), ("search", "embedder"), ("support", "helpdesk")):
        path = tmp_path / "csv" / ns / name / "peakwise.csv"
        with path.open() as f:
            rows = list(csv.reader(f))
        assert tuple(rows[0][: len(CSV_COLUMNS)]) == CSV_COLUMNS
        assert abs(len(rows) - 1 - DAYS * 1440) <= 5
        demand = [float(r[1]) for r in rows[1:] if r[1]]
        assert max(demand) > 0
        assert sum(float(r[7]) for r in rows[1:] if r[7]) > 0
    # Cost per million tokens beside the API price: assistant-70b's demand is in tokens.
    tokens = _table_rows(stdout, "Cost per million tokens served (Peakwise)")
    assert "vs API $0.6/M" in tokens[0]
    (row,) = [r for r in tokens if r.split() and r.split()[0] == "chat/assistant-70b"]
    per_million = float(row.split()[4].replace(",", ""))
    assert per_million > 0 and "to self-host" in row
    # The advice for both GPU types, at both terms.
    assert "Commitment advice: nvidia-h100-80gb" in stdout
    assert "Commitment advice: nvidia-l40s-48gb" in stdout

    page = open_page(
        tmp_path / "report.html",
        # Every plot that rendered (decoded, with a size), by its section.
        "Array.from(document.querySelectorAll('img.plot'))"
        ".filter(i => i.complete && i.naturalWidth > 100 && i.naturalHeight > 100)"
        ".map(i => [i.closest('section').id, i.dataset.plot])",
    )
    assert page.errors == []
    # Self-contained: the page asked for nothing but itself and its inline images.
    assert all(url.startswith(("file:", "data:")) for url in page.requests), page.requests
    assert page.screenshot.startswith(b"\x89PNG") and len(page.screenshot) > 10_000
    plots = {tuple(p) for p in page.found}
    for ns in NAMESPACES:  # demand, forecast and capacity by tier; cumulative cost; budget
        for plot in ("services", "cumulative-cost", "budget"):
            assert (f"ns-{ns}", f"{plot}-{ns}") in plots, plots
    assert ("fleet", "cumulative-cost-fleet") in plots
    for gpu_type in ("nvidia-h100-80gb", "nvidia-l40s-48gb"):  # the cost curve of each
        assert ("advice", f"advice-{gpu_type}") in plots, plots
    (tmp_path / "report.png").write_bytes(page.screenshot)


def test_from_cluster_reads_the_same_fleet_as_the_manifests(
    cluster: LocalCluster, history: History, fleet_in_cluster: None, tmp_path: Path
) -> None:
    from_files = _backtest(cluster, history, tmp_path / "files", "--manifests", str(EXAMPLE))
    # The fleet's namespaces only: the API server may hold other tests' services too.
    namespaces = [arg for ns in NAMESPACES for arg in ("--namespace", ns)]
    from_cluster = _backtest(
        cluster,
        history,
        tmp_path / "cluster",
        "--from-cluster",
        "--kubeconfig",
        cluster.kubeconfig,
        *namespaces,
    )
    # The same objects and history: the same replay, table for table.
    for scope in (*(f"Namespace {ns}:" for ns in NAMESPACES), "Fleet: 6 services"):
        assert _table_rows(from_cluster, scope) == _table_rows(from_files, scope)
    one = _backtest(
        cluster,
        history,
        tmp_path / "one",
        *("--from-cluster", "--kubeconfig", cluster.kubeconfig, "--namespace", "search"),
    )
    assert "Namespace search:" in one and "Namespace chat:" not in one


def test_advise_from_the_cluster(
    cluster: LocalCluster, history: History, fleet_in_cluster: None
) -> None:
    proc = _peakwise(
        "advise",
        *("--prometheus-url", cluster.prometheus_url, "--from-cluster"),
        *("--history", f"{DAYS}d", "--end", history.end, "--gpu-type", "nvidia-h100-80gb"),
        kubeconfig=cluster.kubeconfig,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Commitment advice: nvidia-h100-80gb" in proc.stdout
    assert "Cost curve" in proc.stdout
    assert "nvidia-l40s-48gb" not in proc.stdout
    for term in ("1y", "3y"):  # the pools' peakwise.dev/reserved-price-<term> annotations
        assert term in proc.stdout


def test_the_operator_writes_the_advice_into_pool_status(
    cluster: LocalCluster, history: History, fleet_in_cluster: None, tmp_path: Path
) -> None:
    # The advice is on by default: no flag.
    operator = OperatorProcess(cluster, tmp_path / "operator.log", cluster.kubeconfig, NAMESPACES)
    operator.start()
    try:

        def advice() -> dict[str, Any] | None:
            pool = cluster.kubectl_json("get", "gpunodepool", "h100-on-demand")
            found: dict[str, Any] | None = (pool.get("status") or {}).get("advice")
            return found if found and found.get("computedAt") else None

        status = wait_for("status.advice on h100-on-demand", advice, timeout=300, every=2)
        # One computation per GPU type, shared by its pools (their timers run concurrently).
        spot = wait_for(
            "status.advice on h100-spot",
            lambda: (
                cluster.kubectl_json("get", "gpunodepool", "h100-spot").get("status") or {}
            ).get("advice"),
            timeout=120,
            every=2,
        )
        assert spot["computedAt"] == status["computedAt"]
    finally:
        operator.stop()
    assert operator.proc is not None and operator.proc.returncode is not None
    assert status["gpuType"] == "nvidia-h100-80gb"
    assert status["currentNodes"] == 2  # h100-reserved's reservedNodes
    assert {t["term"] for t in status["terms"]} >= {"1y", "3y"}
    assert status["curve"] and status["assumptions"] and status["message"]
    # The same advice as the pure core gives on the same history (the operator reads the
    # 14 days up to the minute it computed at; the backfill holds DAYS of them).
    at = datetime.fromisoformat(status["computedAt"].replace("Z", "+00:00"))
    end = at.replace(second=0, microsecond=0)
    fleet = parse_fleet(_documents(), "examples/fleet")
    source = PrometheusHistory(cluster.prometheus_url)
    demand = {
        (d.metadata.namespace or "default", d.metadata.name): source.fetch(
            d.spec.demand.query, end - timedelta(days=14), end, 60
        )
        for d in fleet.deployments
    }
    _, _, aligned = align(demand)
    (expected,), _ = fleet_advice(
        fleet, aligned, FleetOptions(advice_gpu_types=("nvidia-h100-80gb",))
    )
    assert status["recommendedTerm"] == expected.best.term
    assert status["recommendedNodes"] == expected.best.nodes
    by_term = {t["term"]: t["nodes"] for t in status["terms"]}
    assert by_term == {t.term: t.nodes for t in expected.terms}
    # Advice only: nothing was bought; the pool's commitment is as the platform wrote it.
    reserved = cluster.kubectl_json("get", "gpunodepool", "h100-reserved")
    assert reserved["spec"]["reservedNodes"] == 2

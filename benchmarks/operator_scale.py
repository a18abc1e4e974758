"""The operator at scale on the local cluster: 1,000 InferenceDeployments in 50 namespaces.

    python benchmarks/operator_scale.py                 # starts a cluster in a temp dir
    PEAKWISE_BENCH_CLUSTER_DIR=/tmp/c python benchmarks/operator_scale.py   # reuse a running one

What it does:
1. Backfills ``--series`` demand series (``peakwise synth-trace``, 15 days each, labelled
   ``service=bench-<i>``) into the cluster's Prometheus.
2. Creates ``--namespaces`` namespaces, ``--pools`` kwok GPUNodePools (the first
   ``--enforced-pools`` serve the Enforce-mode deployments, so only they get kwok nodes),
   and ``--deployments`` InferenceDeployments, ``--enforce`` of them in Enforce mode, the rest
   in Recommend mode. Their demand queries are ``--queries`` distinct PromQL expressions over
   the backfilled series (label matchers and a scale factor), 14 days of history each.
3. Runs ``peakwise operator run --interval 30s`` (the default) as a subprocess and measures:
   * each planning round (forecast + joint plan) from ``peakwise_planning_round_seconds`` on
     its /metrics;
   * the full round, from ``peakwise_full_round_seconds``: from a round's start until every
     InferenceDeployment has followed it (children applied, status written if it changed),
     and how many status patches each round wrote (``peakwise_status_writes_total``), how
     many of them only the heartbeat was due for, and the operator's CPU time per round;
     with ``--diff-statuses``, which status fields changed between consecutive rounds;
   * when every object first carried a status (listed from the API server's watch cache);
   * the operator's peak RSS (``VmHWM`` of /proc/<pid>/status), and its fit workers';
   * with the commitment advice on (the default; ``--no-commitment-advice`` turns it off in
     the operator too), when every GPUNodePool first carried ``status.advice`` and the
     full rounds that overlapped its computation (the pools' advice timers start 15 s
     after the operator; the operator logs each type's wall and CPU time).
   With ``--until-fitted`` it goes on until every model is fitted and ``--rounds`` more full
   rounds have run, and prints the RSS then: what 1,000 fitted models cost (with 1,000
   distinct queries that takes about half an hour).
4. Cleans up what it created (``--keep`` leaves it) and stops the cluster it started.

The operator fits one forecaster per distinct query (about a second each on one core for 14
days of minutes) on a background worker. The first round after a start waits for fits only up
to ``--fit-wait`` (15 s) and plans the services whose model is not ready provisionally; the
benchmark prints how many were, per round, and when every model was fitted. Later rounds
only fetch the newest minutes and predict.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from kubernetes.client.exceptions import ApiException

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from e2e.clusterfix import LocalCluster, _read_env  # noqa: E402
from e2e.promstack import free_port  # noqa: E402

PREFIX = "bench-scale"
GROUP, VERSION = "peakwise.dev", "v1alpha1"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@contextmanager
def local_cluster() -> Iterator[LocalCluster]:
    reuse = os.environ.get("PEAKWISE_BENCH_CLUSTER_DIR")
    if reuse:
        cluster = LocalCluster(reuse)
        cluster.env = _read_env(Path(reuse) / "cluster.env")
        log(f"reusing the cluster in {reuse}")
        yield cluster
        return
    with tempfile.TemporaryDirectory(prefix="peakwise-bench-") as tmp:
        cluster = LocalCluster(Path(tmp) / "cluster")
        started = time.monotonic()
        cluster.up()
        log(f"cluster up in {time.monotonic() - started:.1f}s ({tmp})")
        try:
            yield cluster
        finally:
            cluster.down()


def backfill(cluster: LocalCluster, series: int, work: Path) -> None:
    for i in range(series):
        trace = work / f"bench-{i}.csv"
        subprocess.run(
            [
                *(sys.executable, "-m", "peakwise", "synth-trace", "--days", "15"),
                *("--seed", str(i + 1), "--peak", str(1500 + 700 * i), "--out", str(trace)),
            ],
            check=True,
            capture_output=True,
        )
        cluster.backfill_trace(trace, f"service=bench-{i}")
    log(f"backfilled {series} series of 15 days")


def pools(n: int, enforced: int) -> list[dict[str, Any]]:
    tiers = ["reserved", "spot", "onDemand"]
    out = []
    for i in range(n):
        if i < enforced:
            gpu_type, tier, max_nodes = "bench-enf", tiers[i % 3], 8
        else:
            gpu_type, tier, max_nodes = f"bench-g{(i - enforced) // 3 % 5}", tiers[i % 3], 400
        spec: dict[str, Any] = {
            "gpuType": gpu_type,
            "gpusPerNode": 8,
            "capacityType": tier,
            "pricePerNodeHour": {"reserved": 60.0, "spot": 30.0, "onDemand": 98.0}[tier],
            "maxNodes": max_nodes,
            "provisioningTime": "3m",
            "nodeLabels": {"peakwise.dev/capacity-type": tier, "bench/pool": f"{PREFIX}-{i}"},
            "provider": {"kwok": {"nodeNamePrefix": f"{PREFIX}-{i}"}},
        }
        if tier == "reserved":
            spec["reservedNodes"] = 2
        if tier == "spot":
            spec["nodeTaints"] = [{"key": "peakwise.dev/capacity-type", "value": "spot"}]
        out.append(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "GPUNodePool",
                "metadata": {"name": f"{PREFIX}-{i}"},
                "spec": spec,
            }
        )
    return out


def query(j: int, series: int) -> str:
    factor = 1 + j // series
    return (
        f'sum(peakwise_trace_requests_per_minute{{service="bench-{j % series}"}}) / 60 * {factor}'
    )


def deployments(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for k in range(args.deployments):
        enforce = k < args.enforce
        ns = f"{PREFIX}-{k % args.namespaces}"
        if enforce:
            profiles = [{"gpuType": "bench-enf", "gpusPerReplica": 1, "throughputPerReplica": 400}]
            replicas = {"min": 1, "max": 3}
        else:
            g = k % 5
            profiles = [
                {"gpuType": f"bench-g{g}", "gpusPerReplica": 1, "throughputPerReplica": 12},
                {
                    "gpuType": f"bench-g{(g + 1) % 5}",
                    "gpusPerReplica": 2,
                    "throughputPerReplica": 30,
                },
            ]
            replicas = {"min": 1, "max": 40}
        out.append(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "InferenceDeployment",
                "metadata": {"name": f"svc-{k}", "namespace": ns},
                "spec": {
                    "mode": "Enforce" if enforce else "Recommend",
                    "priority": 100 + k % 7,
                    "template": {
                        "spec": {"containers": [{"name": "server", "image": "bench/server:1"}]}
                    },
                    "gpuProfiles": profiles,
                    "demand": {"query": query(k % args.queries, args.series)},
                    "replicas": replicas,
                    "forecast": {"history": args.history, "leadTime": "10m"},
                    "capacity": {"spot": {"maxFraction": 0.5}},
                },
            }
        )
    return out


def apply(cluster: LocalCluster, docs: list[dict[str, Any]], chunk: int = 100) -> None:
    batches = [docs[i : i + chunk] for i in range(0, len(docs), chunk)]

    def one(batch: list[dict[str, Any]]) -> None:
        cluster.kubectl(
            "apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(batch), timeout=300
        )

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, batches))


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def vm(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def children(pid: int) -> list[int]:
    """The operator's child processes (its model-fitting workers)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(c) for c in task.read_text().split()]
    return found


def plan_times(cluster: LocalCluster) -> list[str | None]:
    from kubernetes import client

    items = client.CustomObjectsApi(cluster.api_client()).list_cluster_custom_object(
        GROUP,
        VERSION,
        "inferencedeployments",
        label_selector=f"{PREFIX}=1",
        # From the API server's watch cache: the poll itself should load it as little as
        # possible (it lists 1,000 objects every few seconds).
        resource_version="0",
    )["items"]
    return [(i.get("status") or {}).get("lastPlanTime") for i in items]


def statuses(cluster: LocalCluster) -> dict[tuple[str, str], dict[str, Any]]:
    from kubernetes import client

    items = client.CustomObjectsApi(cluster.api_client()).list_cluster_custom_object(
        GROUP, VERSION, "inferencedeployments", label_selector=f"{PREFIX}=1", resource_version="0"
    )["items"]
    return {
        (i["metadata"]["namespace"], i["metadata"]["name"]): i.get("status") or {} for i in items
    }


def changed_fields(
    before: dict[tuple[str, str], dict[str, Any]], after: dict[tuple[str, str], dict[str, Any]]
) -> dict[str, int]:
    """How many objects changed each status field (conditions by type: status or reason;
    pools and tiers together are what the plan changed)."""
    counts: dict[str, int] = {}
    for key, new in after.items():
        old = before.get(key)
        if old is None:
            continue
        names = [
            k for k in new.keys() | old.keys() if k != "conditions" and new.get(k) != old.get(k)
        ]
        judged = {
            c.get("type"): (c.get("status"), c.get("reason")) for c in old.get("conditions") or []
        }
        for c in new.get("conditions") or []:
            if judged.get(c.get("type")) != (c.get("status"), c.get("reason")):
                names.append(f"conditions[{c.get('type')}]")
        for name in names:
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def pools_advised(cluster: LocalCluster, pools: int) -> bool:
    """Whether every benchmark pool carries its commitment advice."""
    from kubernetes import client

    items = client.CustomObjectsApi(cluster.api_client()).list_cluster_custom_object(
        GROUP, VERSION, "gpunodepools", resource_version="0"
    )["items"]
    advised = [
        i
        for i in items
        if i["metadata"]["name"].startswith(PREFIX)
        and ((i.get("status") or {}).get("advice") or {}).get("computedAt")
    ]
    return bool(len(advised) >= pools)


def cleanup(cluster: LocalCluster, args: argparse.Namespace) -> None:
    log("cleaning up")
    for i in range(args.namespaces):
        cluster.kubectl("delete", "namespace", f"{PREFIX}-{i}", "--wait=false", check=False)
    names = [f"gpunodepool/{PREFIX}-{i}" for i in range(args.pools)]
    cluster.kubectl("delete", *names, "--ignore-not-found", "--wait=false", check=False)
    cluster.kubectl("delete", "nodes", "-l", "bench/pool", "--wait=false", check=False)


def run(args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    with local_cluster() as cluster, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        backfill(cluster, args.series, work)
        cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        namespaces = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"{PREFIX}-{i}"}}
            for i in range(args.namespaces)
        ]
        started = time.monotonic()
        objects = deployments(args)
        for obj in objects:
            obj["metadata"]["labels"] = {PREFIX: "1"}
        apply(cluster, namespaces + pools(args.pools, args.enforced_pools))
        apply(cluster, objects)
        figures["create_seconds"] = round(time.monotonic() - started, 1)
        log(f"created {len(objects)} InferenceDeployments in {figures['create_seconds']}s")

        metrics_port = free_port()
        log_file = Path(args.log or work / "operator.log")
        command = [sys.executable]
        if args.profile:
            command += ["-m", "cProfile", "-o", args.profile]
        command += ["-m", "peakwise", "operator", "run", "--interval", args.interval]
        command += ["--prometheus-url", cluster.prometheus_url]
        command += ["--metrics-port", str(metrics_port), "--liveness-port", "0"]
        # Its namespaces have no CostBudget and budgets fail closed: the platform's default
        # budget opens them, so the Enforce-mode deployments scale as a budgeted team's would.
        command += ["--unbudgeted", "DefaultBudget", "--default-budget-hourly", "1000000"]
        if not args.commitment_advice:
            command += ["--no-commitment-advice"]
        env = {**os.environ, "KUBECONFIG": cluster.kubeconfig}
        with log_file.open("wb") as out:
            proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        rounds: list[float] = []
        full: list[float] = []
        full_ended: list[float] = []  # seconds after the start each full round was seen
        advised: float | None = None  # when every pool first carried its advice
        seen_count, seen_sum = 0.0, 0.0
        first_all = None
        all_fitted: float | None = None
        fitted_wall = 0.0  # time.time() when every model was fitted
        rss_when_fitted = 0
        after_fitted: list[float] = []
        reactive_per_round: list[int] = []
        peak_rss = 0
        worker_rss = 0
        # Full rounds, their seconds, status writes, heartbeat writes, operator CPU so far.
        seen_full = (0.0, 0.0, 0.0, 0.0, 0.0)
        full_cpu: list[float] = []
        status_writes: list[int] = []
        heartbeat_writes: list[int] = []
        previous_statuses: dict[tuple[str, str], dict[str, Any]] = {}
        try:

            def measured() -> bool:
                if args.until_fitted:
                    return all_fitted is not None and len(after_fitted) >= args.rounds
                return len(full) >= args.rounds

            while not measured() and time.monotonic() - t0 < args.timeout:
                time.sleep(3)
                if proc.poll() is not None:
                    raise RuntimeError(f"the operator exited ({proc.returncode}); see {log_file}")
                peak_rss = max(peak_rss, vm(proc.pid, "VmHWM"))
                worker_rss = max(worker_rss, sum(vm(c, "VmHWM") for c in children(proc.pid)))
                try:
                    url = f"http://127.0.0.1:{metrics_port}/metrics"
                    text = urllib.request.urlopen(url, timeout=10).read().decode()
                except OSError:
                    continue
                fitted = metric(text, "peakwise_model_fits_total")
                pending = metric(text, "peakwise_model_fits_pending")
                reactive = sum(
                    float(v)
                    for v in re.findall(r"^peakwise_forecast_reactive\{.*\} (\S+)$", text, re.M)
                )
                if all_fitted is None and fitted >= args.queries and pending == 0:
                    all_fitted = time.monotonic() - t0
                    fitted_wall = time.time()
                    rss_when_fitted = vm(proc.pid, "VmRSS")
                    log(
                        f"all {int(fitted)} models fitted {all_fitted:.1f}s after the start; "
                        f"RSS {rss_when_fitted / 2**20:.0f} MiB"
                    )
                count = metric(text, "peakwise_planning_round_seconds_count")
                total = metric(text, "peakwise_planning_round_seconds_sum")
                if count > seen_count:
                    per = (total - seen_sum) / (count - seen_count)
                    rounds += [per] * int(count - seen_count)
                    log(
                        f"planning round #{int(count)}: {per:.1f}s (forecast + plan); "
                        f"{int(reactive)} planned provisionally or reactively, "
                        f"{int(pending)} fits pending"
                    )
                    reactive_per_round.append(int(reactive))
                    seen_count, seen_sum = count, total
                full_count = metric(text, "peakwise_full_round_seconds_count")
                full_sum = metric(text, "peakwise_full_round_seconds_sum")
                writes = metric(text, 'peakwise_status_writes_total{kind="InferenceDeployment"}')
                cpu = metric(text, "process_cpu_seconds_total")  # the operator's, not its workers'
                beats = metric(
                    text, 'peakwise_status_heartbeat_writes_total{kind="InferenceDeployment"}'
                )
                if full_count > seen_full[0]:
                    took = (full_sum - seen_full[1]) / (full_count - seen_full[0])
                    new = int(full_count - seen_full[0])
                    full += [took] * new
                    full_ended += [time.monotonic() - t0] * new
                    per_round = (writes - seen_full[2]) / new
                    beats_per_round = (beats - seen_full[3]) / new
                    cpu_per_round = (cpu - seen_full[4]) / new
                    full_cpu.append(round(cpu_per_round, 1))
                    status_writes.append(round(per_round))
                    heartbeat_writes.append(round(beats_per_round))
                    if all_fitted is not None and time.time() >= fitted_wall:
                        after_fitted += [took] * new
                    log(
                        f"full round #{int(full_count)}: {took:.1f}s "
                        f"(operator CPU {cpu_per_round:.1f}s per round); "
                        f"{per_round:.0f} InferenceDeployment statuses written "
                        f"({beats_per_round:.0f} of them by the heartbeat alone)"
                    )
                    seen_full = (full_count, full_sum, writes, beats, cpu)
                    if args.diff_statuses:
                        try:
                            listed = statuses(cluster)
                        except ApiException as error:
                            log(f"listing the statuses failed ({error.status})")
                        else:
                            if previous_statuses:
                                diff = changed_fields(previous_statuses, listed)
                                log(f"status fields changed since the last list: {diff}")
                            previous_statuses = listed
                if args.commitment_advice and advised is None:
                    try:
                        if pools_advised(cluster, args.pools):
                            advised = time.monotonic() - t0
                            log(f"every pool carried its commitment advice {advised:.1f}s in")
                    except ApiException as error:
                        log(f"listing the pools failed ({error.status}); retrying")
                if first_all is None:
                    try:
                        times = plan_times(cluster)
                    except ApiException as error:  # an overloaded API server: poll again
                        log(f"listing the statuses failed ({error.status}); retrying")
                        continue
                    if times and all(times):
                        first_all = time.monotonic() - t0
                        log(f"every status planned {first_all:.1f}s after the operator started")
            peak_rss = max(peak_rss, vm(proc.pid, "VmHWM"))
            # A full round overlapped the advice if it ended after the advice timers started
            # (15 s in) and started before the last pool's advice was seen (one 3 s poll).
            while_advised = [
                f
                for f, at in zip(full, full_ended, strict=True)
                if advised is not None and at >= 15.0 and at - f <= advised + 3.0
            ]
            figures.update(
                {
                    "deployments": args.deployments,
                    "namespaces": args.namespaces,
                    "pools": args.pools,
                    "enforce": args.enforce,
                    "distinct_queries": args.queries,
                    "history": args.history,
                    "planning_round_seconds": [round(r, 2) for r in rounds],
                    "full_round_seconds": [round(f, 1) for f in full],
                    "operator_cpu_seconds_per_full_round": full_cpu,
                    "status_writes_per_round": status_writes,
                    "heartbeat_writes_per_round": heartbeat_writes,
                    "first_all_planned_seconds": round(first_all or -1, 1),
                    "provisional_or_reactive_per_round": reactive_per_round,
                    "all_models_fitted_seconds": round(all_fitted or -1, 1),
                    "peak_rss_mib": round(peak_rss / 2**20, 1),
                    "rss_mib_when_all_fitted": round(rss_when_fitted / 2**20, 1),
                    "rss_mib_at_the_end": round(vm(proc.pid, "VmRSS") / 2**20, 1),
                    "full_round_seconds_after_all_fitted": [round(f, 1) for f in after_fitted],
                    "fit_worker_peak_rss_mib": round(worker_rss / 2**20, 1),
                    "commitment_advice": args.commitment_advice,
                    "every_pool_advised_seconds": round(advised or -1, 1),
                    "full_round_seconds_while_advice_computed": while_advised,
                    "operator_log": str(log_file),
                }
            )
        finally:
            proc.send_signal(2)  # SIGINT: cProfile writes its file on a clean exit
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            if not args.keep:
                cleanup(cluster, args)
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--deployments", type=int, default=1000)
    p.add_argument("--namespaces", type=int, default=50)
    p.add_argument("--pools", type=int, default=20)
    p.add_argument("--enforced-pools", type=int, default=5)
    p.add_argument("--enforce", type=int, default=20, help="deployments in Enforce mode")
    p.add_argument("--series", type=int, default=4, help="backfilled series")
    p.add_argument("--queries", type=int, default=20, help="distinct demand queries")
    p.add_argument("--history", default="14d")
    p.add_argument("--interval", default="30s", help="the operator's default")
    p.add_argument("--rounds", type=int, default=3, help="full rounds to measure")
    p.add_argument(
        "--until-fitted",
        action="store_true",
        help="measure until every model is fitted, then --rounds more full rounds",
    )
    p.add_argument(
        "--commitment-advice",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the operator's daily commitment advice in pool status (on, as by default)",
    )
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--log", help="operator log file (default: a temp file)")
    p.add_argument("--profile", help="run the operator under cProfile, write stats here")
    p.add_argument("--keep", action="store_true", help="leave the objects in the cluster")
    p.add_argument(
        "--diff-statuses",
        action="store_true",
        help="after each full round, list the statuses and print which fields changed",
    )
    args = p.parse_args()
    figures = run(args)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

"""The fleet backtest from Prometheus: its speed, and the commitment advice against brute force.

    python benchmarks/fleet_backtest.py                 # 20 services x 14 days, then the advice
    python benchmarks/fleet_backtest.py --services 6    # the example fleet as it is

What it does:
1. Starts a real Prometheus (Debian's, on loopback, in a temporary folder) and backfills one
   synthetic 14-day trace per service (``peakwise.trace.synthesize_family``: weekly, growth,
   level-shift and spikes families in turn, each its own seed and scale), labelled
   ``service=<name>``: the series the example fleet's demand queries read; then waits until
   Prometheus has compacted the backfilled blocks (its CPU time stops growing), so that the
   timing below is Peakwise's alone.
2. Writes the fleet's manifests: the pools of ``examples/fleet/`` and its six services; with
   ``--services`` above six, copies of them in more namespaces (``chat-2``, ``search-2``, ...),
   each on its own series, with the namespaces' budgets copied too, and the pools' maxNodes
   (and the committed nodes) multiplied by the number of copies.
3. Runs ``peakwise backtest --prometheus-url ... --manifests ... --out ... --report ...`` as a
   separate process and prints its tables, its own timings (fetch, replay, CSVs, report; the
   CPU time of its main process and of its workers; the replay split into the forecasts'
   fits, the Peakwise replay's planner rounds, the baselines and the advice, each with the
   main process's CPU time) and the whole command's wall and CPU time (the target: 20
   services x 14 days in under 2 minutes on this machine); ``--runs N`` runs it N times on
   the one backfill.
4. Advice against brute force, for the H100s of the first ``--advice-services`` services'
   fleet (the example fleet's): the advice's count per term, and the expected monthly cost
   by the real planner (a joint plan per minute at every committed count from 0 to the
   peak, ``fleet.brute_force_commitment``, every ``--advice-stride``-th minute) at that
   count and at the best count; the gap, per term and for the recommendation (the cheapest
   term at its count) against the cheapest term and count the planner found.

The machine is shared: wall time is noisy; CPU time is printed beside it.
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from e2e import trace_backfill  # noqa: E402
from e2e.promstack import PrometheusServer  # noqa: E402

from peakwise.adapters.prometheus import PrometheusHistory  # noqa: E402
from peakwise.backtest.fleet import (  # noqa: E402
    FleetOptions,
    align,
    brute_force_commitment,
    fleet_advice,
    parse_fleet,
)
from peakwise.trace import synthesize_family, write_trace_csv  # noqa: E402

EXAMPLE = REPO / "examples" / "fleet"
FAMILIES = ("weekly", "growth", "level-shift", "spikes")
PEAKS = {
    "assistant": 3000,
    "assistant-70b": 400,
    "query-rewriter": 600,
    "embedder": 6000,
    "summarizer": 600,
    "helpdesk": 1200,
}
"""Requests per minute at each example service's peak (assistant-70b: its tokens follow)."""
RESERVED_PRICES = ("1y=62", "3y=42.5")
COMPACTION_TICK = 70.0
"""Seconds after its start by which Prometheus has begun compacting (its tick is a minute)."""


def example_documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(EXAMPLE.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def fleet_documents(services: int) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """The example fleet's documents, with copies of its services up to `services`; and
    (series label, example service) of each service."""
    docs = example_documents()
    pools = [d for d in docs if d["kind"] == "GPUNodePool"]
    namespaced = [d for d in docs if d["kind"] in ("Namespace", "CostBudget")]
    examples = [d for d in docs if d["kind"] == "InferenceDeployment"]
    copies = -(-services // len(examples))
    # Room for every copy: the example pools' maxNodes are sized for one fleet.
    for pool in pools:
        pool["spec"]["maxNodes"] = pool["spec"]["maxNodes"] * copies
        if pool["spec"].get("capacityType") == "reserved":
            pool["spec"]["reservedNodes"] = pool["spec"]["reservedNodes"] * copies
    out = pools + namespaced
    series = []
    copy_no = 1
    while len(series) < services:
        for infd in examples:
            if len(series) == services:
                break
            name = infd["metadata"]["name"]
            ns = infd["metadata"]["namespace"]
            if copy_no == 1:
                out.append(infd)
                series.append((name, name))
                continue
            clone = copy.deepcopy(infd)
            label = f"{name}-{copy_no}"
            clone["metadata"]["namespace"] = f"{ns}-{copy_no}"
            query = clone["spec"]["demand"]["query"].replace(f'"{name}"', f'"{label}"')
            clone["spec"]["demand"]["query"] = query
            annotations = clone["metadata"].get("annotations") or {}
            for key, value in list(annotations.items()):
                annotations[key] = value.replace(f'"{name}"', f'"{label}"')
            out.append(clone)
            series.append((label, name))
            if not any(
                d["metadata"]["name"] == f"{ns}-{copy_no}" for d in out if d["kind"] == "Namespace"
            ):
                out.append(
                    {
                        "apiVersion": "v1",
                        "kind": "Namespace",
                        "metadata": {"name": f"{ns}-{copy_no}"},
                    }
                )
                for budget in (d for d in namespaced if d["kind"] == "CostBudget"):
                    if budget["metadata"]["namespace"] == ns:
                        twin = copy.deepcopy(budget)
                        twin["metadata"]["namespace"] = f"{ns}-{copy_no}"
                        out.append(twin)
        copy_no += 1
    return out, series


def backfill(
    server: PrometheusServer, series: list[tuple[str, str]], days: int, work: Path, end: int
) -> None:
    server.stop()
    for i, (label, example) in enumerate(series):
        family = FAMILIES[i % len(FAMILIES)]
        table = synthesize_family(
            family, days, seed=100 + i, peak_requests_per_minute=PEAKS[example]
        )
        path = write_trace_csv(work / f"{label}.csv", table)
        trace_backfill.backfill(path, server.data_dir, labels={"service": label}, end=end)
    server.start()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until_idle(server: PrometheusServer, quiet: float = 0.2, most: float = 900) -> float:
    """Wait until Prometheus has done with the backfilled blocks: it compacts them on its
    first compaction tick, a minute after it starts, for a minute or more on 2 cores, and a
    backtest timed meanwhile shares the CPU with it. Returns the seconds waited."""
    assert server.proc is not None
    started = time.perf_counter()
    time.sleep(COMPACTION_TICK)
    before = cpu_seconds(server.proc.pid)
    while time.perf_counter() - started < most:
        time.sleep(5)
        now = cpu_seconds(server.proc.pid)
        if now - before < quiet:
            break
        before = now
    return time.perf_counter() - started


def run_backtest(url: str, manifests: Path, out: Path) -> tuple[float, float, str, str]:
    command = [
        sys.executable,
        "-m",
        "peakwise",
        "backtest",
        "--prometheus-url",
        url,
        "--manifests",
        str(manifests),
        "--out",
        str(out / "csv"),
        "--report",
        str(out / "report.html"),
        "--spot-interruptions",
        "0.02",
        "--api-price-per-million",
        "0.6",
    ]
    for price in RESERVED_PRICES:
        command += ["--reserved-price", price]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"peakwise backtest failed ({proc.returncode}):\n{proc.stderr}")
    return wall, cpu, proc.stdout, proc.stderr


def advice_against_brute_force(
    url: str, docs: list[dict[str, Any]], days: int, stride: int
) -> None:
    fleet = parse_fleet(docs, "the example fleet")
    source = PrometheusHistory(url)
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    demand = {
        (d.metadata.namespace or "default", d.metadata.name): source.fetch(
            d.spec.demand.query, end - timedelta(days=days), end, 60
        )
        for d in fleet.deployments
    }
    start, _, aligned = align(demand)
    prices = dict(p.split("=") for p in RESERVED_PRICES)
    options = FleetOptions(
        spot_interruptions_per_node_hour=0.02,
        reserved_prices={t: float(v) for t, v in prices.items()},
        advice_gpu_types=("nvidia-h100-80gb",),
    )
    started = time.process_time()
    (advice,), _ = fleet_advice(fleet, aligned, options)
    advice_cpu = time.process_time() - started
    print(f"\nAdvice for {advice.gpu_type} ({', '.join(advice.services)}), {advice_cpu:.2f} s CPU:")
    print(advice.summary())
    most = int(advice.peak_gpus // advice.market.gpus_per_node) + 1
    by_planner: dict[tuple[str, int], float] = {}
    for term in advice.terms:
        started = time.perf_counter()
        cpu0 = time.process_time()
        counts = list(range(most + 1))
        costs = brute_force_commitment(
            fleet, aligned, start, advice.market, term.price_per_node_hour, counts, stride=stride
        )
        best = min(range(len(counts)), key=lambda i: costs[i])
        at_advice = costs[counts.index(term.nodes)]
        gap = at_advice / costs[best] - 1
        print(
            f"  {term.term} at {term.price_per_node_hour:g}/node-h: advice {term.nodes} nodes "
            f"(model {term.monthly_cost:,.0f}/month); brute force best {counts[best]} nodes "
            f"({costs[best]:,.0f}/month by the planner), the advice's count there "
            f"{at_advice:,.0f}/month: gap {gap:+.2%}; brute force over 0-{most} took "
            f"{time.perf_counter() - started:.0f} s wall, {time.process_time() - cpu0:.0f} s CPU"
        )
        print(
            "    planner cost by count: "
            + ", ".join(f"{c}: {v:,.0f}" for c, v in zip(counts, costs, strict=True))
        )
        by_planner.update({(term.term, c): v for c, v in zip(counts, costs, strict=True)})
    # The recommendation (the cheapest term at its count) against the cheapest (term, count)
    # the planner found.
    best = advice.best
    (term, count), cheapest = min(by_planner.items(), key=lambda item: item[1])
    recommended = by_planner[(best.term, best.nodes)]
    print(
        f"  recommended {best.nodes} nodes for {best.term}: {recommended:,.0f}/month by the "
        f"planner; brute force best {count} nodes for {term}: {cheapest:,.0f}/month; "
        f"gap {recommended / cheapest - 1:+.2%}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=int, default=20)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument(
        "--advice-services", type=int, default=6, help="the fleet the advice is checked on"
    )
    parser.add_argument("--no-advice", action="store_true")
    parser.add_argument(
        "--advice-stride",
        type=int,
        default=60,
        help="the brute force plans every N-th minute with the exact solver (default 60: "
        "a plan per minute and count would take hours)",
    )
    parser.add_argument("--keep", help="keep the report and CSVs in this folder")
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="run the backtest this many times on the one backfill (the machine is shared: "
        "the spread of the runs says how much of a difference is noise)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="peakwise-fleet-bench-") as tmp:
        work = Path(tmp)
        server = PrometheusServer(work / "prometheus")
        server.start()
        try:
            docs, series = fleet_documents(args.services)
            end = int(time.time()) - 120
            started = time.perf_counter()
            backfill(server, series, args.days, work, end)
            print(
                f"backfilled {len(series)} services x {args.days} days in "
                f"{time.perf_counter() - started:.0f} s; Prometheus idle "
                f"{wait_until_idle(server):.0f} s later"
            )
            manifests = work / "manifests"
            manifests.mkdir()
            (manifests / "fleet.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
            out = Path(args.keep) if args.keep else work / "out"
            walls = []
            for run in range(max(1, args.runs)):
                wall, cpu, stdout, stderr = run_backtest(server.url, manifests, out)
                walls.append(wall)
                if run == 0:
                    print(stdout)
                print(stderr.strip().splitlines()[-1] if stderr.strip() else "")
                size = (out / "report.html").stat().st_size
                print(
                    f"peakwise backtest, {len(series)} services x {args.days} days from "
                    f"Prometheus: {wall:.1f} s wall, {cpu:.1f} s CPU (all its processes); "
                    f"report {size / 1e6:.1f} MB"
                )
            if len(walls) > 1:
                print(f"{len(walls)} runs: {min(walls):.1f}-{max(walls):.1f} s wall")
            if not args.no_advice:
                example, _ = fleet_documents(min(args.advice_services, len(series)))
                advice_against_brute_force(server.url, example, args.days, args.advice_stride)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``peakwise backtest --prometheus-url`` (the fleet from its source) and ``peakwise advise``.

The edges live here: the fleet's objects come from manifests (``--manifests DIR``) or the
cluster (``--from-cluster``, through the kubeconfig), each service's demand history from
Prometheus through the project's adapter; the replay, the advice and the reports are the
pure core's.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from peakwise.api.common import parse_duration
from peakwise.backtest.config import ConfigError
from peakwise.backtest.fleet import (
    Fleet,
    Key,
    key_of,
    parse_fleet,
    parse_fleet_yaml,
    tokens_query,
)
from peakwise.forecasting.series import Series
from peakwise.operator import tenancy_flags
from peakwise.planner import TenancyPolicy


def _reserved_price(text: str) -> tuple[str, float]:
    term, sep, price = text.partition("=")
    try:
        value = float(price)
    except ValueError:
        value = math.nan
    if not sep or not term or not value > 0:
        raise argparse.ArgumentTypeError(f"use TERM=PRICE, e.g. 3y=42.5 (got {text!r})")
    return term, value


def add_source_arguments(p: argparse.ArgumentParser, *, required: bool) -> None:
    """Where the fleet and its history come from: Prometheus, and manifests or the cluster."""
    group = p.add_argument_group("the fleet from its source")
    group.add_argument(
        "--prometheus-url",
        required=required,
        help="Prometheus to read each service's spec.demand.query history from",
    )
    source = group.add_mutually_exclusive_group()
    source.add_argument(
        "--manifests",
        metavar="DIR",
        help="a folder (or file) of YAML: GPUNodePools, InferenceDeployments, CostBudgets",
    )
    source.add_argument(
        "--from-cluster",
        action="store_true",
        help="read them from the cluster of --kubeconfig (else $KUBECONFIG, ~/.kube/config)",
    )
    group.add_argument("--kubeconfig", help="kubeconfig for --from-cluster")
    group.add_argument("--context", help="kubeconfig context for --from-cluster")
    group.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="only this namespace's services (repeatable; default: all)",
    )
    group.add_argument(
        "--history", default="14d", help="how much history to replay, up to --end (default 14d)"
    )
    group.add_argument(
        "--end", help="end of the history, ISO 8601 UTC (default: now, to the minute)"
    )
    group.add_argument(
        "--reserved-price",
        action="append",
        type=_reserved_price,
        default=[],
        metavar="TERM=PRICE",
        help="a commitment term's effective $/node-hour for the advice, e.g. 1y=62 3y=42.5 "
        "(repeatable; default: the pools' peakwise.dev/reserved-price-<term> annotations)",
    )
    group.add_argument(
        "--gpu-type",
        action="append",
        default=[],
        help="advise on this GPU type only (repeatable; default: every type the fleet uses)",
    )


def add_fleet_backtest_arguments(p: argparse.ArgumentParser) -> None:
    add_source_arguments(p, required=False)
    group = p.add_argument_group("fleet output")
    group.add_argument("--report", metavar="FILE.html", help="write the self-contained HTML report")
    group.add_argument(
        "--api-price-per-million",
        type=float,
        help="an API's price per million tokens, shown next to each service's own cost per "
        "million tokens served (services whose demand is in tokens, or that name a tokens "
        "query in the peakwise.dev/tokens-query annotation)",
    )
    group.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="processes for the forecasts and baselines (default: up to 2; 1: none)",
    )
    tenancy_flags.add_tenancy_arguments(
        p, "namespaces without a CostBudget, as the operator's flags set them"
    )


def tenancy_policy(args: argparse.Namespace) -> TenancyPolicy:
    """The platform's rules from the operator's tenancy flags (operator/tenancy_flags.py)."""
    try:
        return tenancy_flags.tenancy_policy(args)
    except ValueError as error:
        raise ConfigError(str(error)) from None


@dataclass
class FleetSource:
    fleet: Fleet
    demand: dict[Key, Series]
    tokens: dict[Key, Series]
    warnings: list[str]
    fetch_seconds: float


def _manifest_documents(path: Path) -> list[Mapping[str, Any]]:
    files = sorted(path.rglob("*.y*ml")) if path.is_dir() else [path]
    if not files:
        raise ConfigError(f"{path}: no YAML files")
    docs: list[Mapping[str, Any]] = []
    for f in files:
        try:
            text = f.read_text()
        except OSError as e:
            raise ConfigError(f"cannot read {f}: {e.strerror}") from None
        docs += parse_fleet_yaml(text, str(f))
    return docs


def load_fleet_objects(
    args: argparse.Namespace, policy: TenancyPolicy | None = None
) -> tuple[Fleet, list[str]]:
    """The fleet from --manifests or --from-cluster, under the platform's `policy` for
    namespaces without a CostBudget (``tenancy_policy``; default: the operator's defaults);
    warnings for objects left out."""
    if args.manifests:
        fleet = parse_fleet(_manifest_documents(Path(args.manifests)), args.manifests)
    elif args.from_cluster:
        from peakwise.adapters.kubernetes import ClusterReadError, read_fleet_objects

        try:
            objects = read_fleet_objects(args.kubeconfig, args.context, args.namespace)
        except ClusterReadError as error:
            raise ConfigError(str(error)) from None
        fleet = parse_fleet(objects, "the cluster", strict=False)
    else:
        raise ConfigError("give --manifests DIR or --from-cluster with --prometheus-url")
    if args.namespace:
        wanted = set(args.namespace)
        kept = tuple(d for d in fleet.deployments if key_of(d)[0] in wanted)
        if not kept:
            raise ConfigError(f"no InferenceDeployment in {', '.join(sorted(wanted))}")
        fleet = replace(fleet, deployments=kept)
    fleet = replace(fleet, policy=policy or TenancyPolicy())
    return fleet, [f"left out {s}" for s in fleet.skipped]


def _end(args: argparse.Namespace) -> datetime:
    if not args.end:
        return datetime.now(UTC).replace(second=0, microsecond=0)
    try:
        end = datetime.fromisoformat(args.end.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--end: not an ISO 8601 time: {args.end!r}") from None
    return end if end.tzinfo else end.replace(tzinfo=UTC)


def fetch_fleet(
    args: argparse.Namespace,
    progress: Callable[[str, float], None],
    policy: TenancyPolicy | None = None,
) -> FleetSource:
    """The fleet's objects and every service's demand history (and tokens, where named).

    A service whose query fails (no data, several series, rejected) is left out with a
    warning, and the others are replayed; Prometheus being unreachable is an error.
    """
    from peakwise.adapters.prometheus import (
        PrometheusHistory,
        PrometheusHistoryError,
        PrometheusUnavailableError,
    )

    fleet, warnings = load_fleet_objects(args, policy)
    end = _end(args)
    start = end - parse_duration(args.history)
    if start >= end:
        raise ConfigError("--history must be longer than 0")
    source = PrometheusHistory(args.prometheus_url, query_budget_seconds=120.0)
    demand: dict[Key, Series] = {}
    tokens: dict[Key, Series] = {}
    started = time.perf_counter()
    kept = []
    for done, infd in enumerate(fleet.deployments):
        key = key_of(infd)
        name = f"{key[0]}/{key[1]}"
        try:
            demand[key] = source.fetch(infd.spec.demand.query, start, end, 60)
            kept.append(infd)
        except PrometheusUnavailableError as error:
            raise ConfigError(str(error)) from None
        except PrometheusHistoryError as error:
            warnings.append(f"left out {name}: {error}")
        query = tokens_query(infd)
        if query and key in demand:
            try:
                tokens[key] = source.fetch(query, start, end, 60)
            except PrometheusHistoryError as error:
                warnings.append(
                    f"{name}: no tokens history, so no cost per million tokens: {error}"
                )
        progress(
            f"fetch {done + 1}/{len(fleet.deployments)} services",
            (done + 1) / len(fleet.deployments),
        )
    if not kept:
        raise ConfigError("no service has demand history in Prometheus: " + "; ".join(warnings))
    fleet = replace(fleet, deployments=tuple(kept))
    return FleetSource(fleet, demand, tokens, warnings, time.perf_counter() - started)


def _executor(jobs: int) -> Executor | None:
    if jobs <= 1:
        return None
    import multiprocessing

    from peakwise.operator.processes import start_worker

    # spawn, not fork: the forecasters' native thread pools do not survive a fork.
    return ProcessPoolExecutor(
        jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=start_worker,
        initargs=(os.getpid(),),
    )


_STAGES = {"forecast": "forecasts", "replay": "peakwise replay", "baselines": "baselines"}
"""The replay's progress stages (their first word) by the name its timings give them."""


class StageClock:
    """Wall time, and this process's CPU time, of the replay's stages, told apart by its
    progress reports (forecasts, the Peakwise replay, the baselines): a stage ends at its
    last report, the next begins there."""

    def __init__(self, forward: Callable[[str, float], None]) -> None:
        self.forward = forward
        self.started = (time.perf_counter(), time.process_time())
        self.last: dict[str, tuple[float, float]] = {}

    def update(self, stage: str, fraction: float) -> None:
        self.forward(stage, fraction)
        name = _STAGES.get(stage.split(" ", maxsplit=1)[0], stage)
        self.last.pop(name, None)  # kept in the order of each stage's last report
        self.last[name] = (time.perf_counter(), time.process_time())

    def stages(self) -> list[tuple[str, float, float]]:
        """(stage, wall s, CPU s in this process), and the rest up to now as "advice"."""
        out = []
        wall0, cpu0 = self.started
        for name, (wall, cpu) in [*self.last.items(), ("advice", self.now())]:
            out.append((name, wall - wall0, cpu - cpu0))
            wall0, cpu0 = wall, cpu
        return out

    @staticmethod
    def now() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()


def run_fleet_backtest_command(args: argparse.Namespace) -> int:
    timings: dict[str, float] = {}
    stages: list[tuple[str, float, float]] = []
    executor = _executor(args.jobs)
    if executor is not None:
        from peakwise.operator.processes import one_blas_thread

        one_blas_thread()  # this process replays beside the workers: it shares their cores
    try:
        code = _fleet_backtest(args, executor, timings, stages)
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    if code:
        return code
    # The workers have exited (the executor was shut down): their CPU time is counted.
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        "took "
        + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items())
        + f" (wall); {time.process_time():.1f} s CPU in this process, "
        + f"{children.ru_utime + children.ru_stime:.1f} s in its workers; the replay: "
        + ", ".join(f"{name} {wall:.1f} s ({cpu:.1f} s CPU here)" for name, wall, cpu in stages),
        file=sys.stderr,
    )
    return 0


def _fleet_backtest(
    args: argparse.Namespace,
    executor: Executor | None,
    timings: dict[str, float],
    stages: list[tuple[str, float, float]],
) -> int:
    from peakwise.backtest.fleet import FleetOptions, run_fleet_backtest
    from peakwise.backtest.progress import ProgressBar
    from peakwise.reports.fleet import advice_text, fleet_tables, token_table, write_fleet_csvs
    from peakwise.reports.fleet_html import write_report

    try:
        options = FleetOptions(
            warmup=parse_duration(args.warmup),
            window=parse_duration(args.window),
            spot_interruptions_per_node_hour=args.spot_interruptions,
            seed=args.seed,
            reserved_prices=dict(args.reserved_price),
            advice_gpu_types=tuple(args.gpu_type),
        )
        with ProgressBar() as bar:
            source = fetch_fleet(args, bar.update, tenancy_policy(args))
            for warning in source.warnings:
                print(f"peakwise backtest: warning: {warning}", file=sys.stderr)
            timings["fetch"] = source.fetch_seconds
            started = time.perf_counter()
            clock = StageClock(bar.update)
            result = run_fleet_backtest(
                source.fleet,
                source.demand,
                options,
                tokens=source.tokens,
                executor=executor,
                progress=clock.update,
            )
            timings["replay"] = time.perf_counter() - started
            stages += clock.stages()
    except (ConfigError, ValueError) as e:
        print(f"peakwise backtest: error: {e}", file=sys.stderr)
        return 2
    print(fleet_tables(result))
    tokens = token_table(result.token_costs(), args.api_price_per_million)
    if tokens:
        print("\n" + tokens)
    for advice in result.advice:
        print("\n" + advice_text(advice))
    for problem in result.advice_problems:
        print(f"\nNo commitment advice for {problem}")

    def csvs() -> tuple[list[Path], float]:
        started = time.perf_counter()
        paths = write_fleet_csvs(result, args.out, executor)
        return paths, time.perf_counter() - started

    # The workers write the CSVs while this process writes the report.
    with ThreadPoolExecutor(1) as side:
        writing = side.submit(csvs) if args.out else None
        if args.report:
            started = time.perf_counter()
            report = write_report(result, args.report, args.api_price_per_million)
            report_seconds = time.perf_counter() - started
        if writing is not None:
            paths, timings["csv"] = writing.result()
            print(f"\nwrote {len(paths)} CSVs to {args.out}")
    if args.report:
        timings["report"] = report_seconds
        print(f"wrote {report}")
    return 0


# --- peakwise advise ---------------------------------------------------------------------


def add_advise_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "advise",
        help="how many GPU nodes to commit to (reserved), from the fleet's demand history",
        description="Recommend, per GPU type, how many reserved (committed) nodes minimise the "
        "fleet's expected monthly cost at its services' shortfall targets, for each commitment "
        "term priced (--reserved-price, or the pools' peakwise.dev/reserved-price-<term> "
        "annotations), against the pools' spot (at its observed interruption rate where the "
        "pool's status has one) and on-demand prices; with the cost curve around the "
        "optimum and the break-even utilisation. It only advises: nothing is bought.",
    )
    add_source_arguments(p, required=True)
    p.add_argument(
        "--spot-interruptions",
        type=float,
        default=0.0,
        help="spot interruptions per node-hour for pools with no observed rate (default 0)",
    )
    p.set_defaults(run=run_advise_command)


def run_advise_command(args: argparse.Namespace) -> int:
    from peakwise.backtest.fleet import FleetOptions, align, fleet_advice
    from peakwise.backtest.progress import ProgressBar
    from peakwise.reports.fleet import advice_text

    try:
        with ProgressBar() as bar:
            source = fetch_fleet(args, bar.update)
        for warning in source.warnings:
            print(f"peakwise advise: warning: {warning}", file=sys.stderr)
        _, _, aligned = align(source.demand)
        options = FleetOptions(
            spot_interruptions_per_node_hour=args.spot_interruptions,
            reserved_prices=dict(args.reserved_price),
            advice_gpu_types=tuple(args.gpu_type),
        )
        advice, problems = fleet_advice(source.fleet, aligned, options)
    except (ConfigError, ValueError) as e:
        print(f"peakwise advise: error: {e}", file=sys.stderr)
        return 2
    for a in advice:
        print(advice_text(a) + "\n")
    for problem in problems:
        print(f"No commitment advice for {problem}")
    return 0 if advice else 1

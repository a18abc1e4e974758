"""`peakwise operator run`: wire the adapters and the core together and start kopf."""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from functools import partial
from typing import Any

import aiohttp
import kopf
from prometheus_client import start_http_server

from peakwise.adapters.prometheus import PrometheusHistory
from peakwise.api.common import parse_duration
from peakwise.forecasting.select import default_forecaster
from peakwise.operator import memory, metrics
from peakwise.operator.actuation import Actuator
from peakwise.operator.controller import Controller
from peakwise.operator.forecasts import ForecastService
from peakwise.operator.handlers import Runtime, register
from peakwise.operator.integrations import CachedRetention, RoundEdges
from peakwise.operator.kube import KubeAdapter, api_client
from peakwise.operator.processes import start_worker
from peakwise.operator.template_policy import TemplatePolicy
from peakwise.operator.tenancy_flags import add_tenancy_arguments, tenancy_policy


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "operator",
        help="run the Kubernetes operator",
        description="Run the Peakwise operator: watch InferenceDeployments, GPUNodePools and "
        "CostBudgets, forecast demand from Prometheus, plan and scale.",
    )
    ops = p.add_subparsers(dest="operator_command", metavar="COMMAND", required=True)
    run = ops.add_parser(
        "run",
        help="run the operator against the cluster of $KUBECONFIG or the pod's ServiceAccount",
        description="Run the operator until interrupted.",
    )
    run.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    run.add_argument("--interval", default="30s", help="re-plan every (default 30s)")
    run.add_argument(
        "--prometheus-url",
        default=os.environ.get("PEAKWISE_PROMETHEUS_URL", "http://127.0.0.1:9090"),
        help="where demand history lives (default: $PEAKWISE_PROMETHEUS_URL, else "
        "http://127.0.0.1:9090, a Prometheus on this machine; logged at start)",
    )
    run.add_argument(
        "--prometheus-header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra HTTP header on every Prometheus request (repeatable), e.g. "
        "X-Scope-OrgID=team-a for Mimir, Cortex or a Thanos tenancy proxy",
    )
    run.add_argument(
        "--prometheus-headers-file",
        default=os.environ.get("PEAKWISE_PROMETHEUS_HEADERS_FILE"),
        help="file of 'Name: value' lines, more headers (a mounted Secret; default "
        "$PEAKWISE_PROMETHEUS_HEADERS_FILE)",
    )
    run.add_argument(
        "--prometheus-bearer-token-file",
        default=os.environ.get("PEAKWISE_PROMETHEUS_BEARER_TOKEN_FILE"),
        help="send 'Authorization: Bearer <its content>', read again when the file changes "
        "(default $PEAKWISE_PROMETHEUS_BEARER_TOKEN_FILE)",
    )
    run.add_argument(
        "--prometheus-ca-file",
        default=os.environ.get("PEAKWISE_PROMETHEUS_CA_FILE"),
        help="CA bundle that signs Prometheus' TLS certificate (default "
        "$PEAKWISE_PROMETHEUS_CA_FILE)",
    )
    run.add_argument("--metrics-port", type=int, default=8080, help="port of /metrics (0: off)")
    run.add_argument(
        "--listen-address",
        default="0.0.0.0",  # in a pod, the Service must reach it
        help="address /metrics and /healthz listen on (default 0.0.0.0; 127.0.0.1 locally)",
    )
    run.add_argument("--liveness-port", type=int, default=8081, help="port of /healthz (0: off)")
    run.add_argument("--refit-every", default="6h", help="refit each service's model (6h)")
    run.add_argument(
        "--status-heartbeat",
        default="5m",
        help="longest an InferenceDeployment's status goes unwritten while no decision changes "
        "(forecast and lastPlanTime are refreshed then; decisions are written at once) (5m)",
    )
    run.add_argument(
        "--window",
        default="1m",
        help="forecast window each decision covers, from one lead time ahead: one decision "
        "interval, in whole minutes of data (1m)",
    )
    run.add_argument(
        "--fit-wait",
        default="15s",
        help="how long a round waits for a new service's first model fit before sizing it "
        "reactively until the fit lands (15s)",
    )
    run.add_argument(
        "--fit-workers", type=int, default=1, help="models fitted at once, in the background (1)"
    )
    run.add_argument(
        "--commitment-advice",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write each GPUNodePool's commitment advice into its status, daily (on by "
        "default; docs/advice.md)",
    )
    run.add_argument(
        "--drain-timeout",
        default="10m",
        help="how long a child the plan moved off a pool (one being deleted, say) waits for "
        "its replacement to be Ready before it goes anyway (10m)",
    )
    run.add_argument(
        "--fit-timeout",
        default="5m",
        help="a fit in a worker process running longer is stopped and its worker replaced; "
        "the service keeps its current model meanwhile (5m)",
    )
    run.add_argument(
        "--fit-in",
        choices=("process", "thread"),
        default="process",
        help="fit in worker processes (default: keeps fits off the event loop's GIL) or threads",
    )
    run.add_argument(
        "--api-connections",
        type=int,
        default=64,
        help="most connections to the API server; watches hold one each (64)",
    )
    add_tenancy_arguments(run, "the platform's rules for every namespace (docs/tenancy.md)")
    templates = run.add_argument_group("templates", "what pod templates may ask for")
    for flag, default, what in (
        ("--allowed-service-account", ["default"], "a ServiceAccount templates may run as"),
        ("--allowed-priority-class", [], "a PriorityClass templates may name"),
        ("--allowed-toleration-key", [], "a taint key templates may tolerate themselves"),
        ("--allowed-capability", ["NET_BIND_SERVICE"], "a capability containers may add"),
    ):
        templates.add_argument(
            flag,
            action="append",
            default=None,
            help=f"{what} (repeatable; default: {', '.join(default) or 'none'})",
        )
    run.add_argument("--peering", help="kopf peering name (several replicas: one is active)")
    run.add_argument("--priority", type=int, default=0, help="kopf peering priority")
    run.add_argument(
        "--log-level",
        default=os.environ.get("PEAKWISE_LOG_LEVEL", "INFO"),
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        type=str.upper,
        help="log level (default: $PEAKWISE_LOG_LEVEL, else INFO)",
    )
    run.add_argument("--verbose", action="store_true", help="debug logging (--log-level DEBUG)")
    run.set_defaults(run=run_operator)


def template_policy(args: argparse.Namespace) -> TemplatePolicy:
    def listed(values: list[str] | None, default: list[str]) -> list[str]:
        return default if values is None else [v for v in values if v]

    return TemplatePolicy.from_lists(
        service_accounts=listed(args.allowed_service_account, ["default"]),
        priority_classes=listed(args.allowed_priority_class, []),
        toleration_keys=listed(args.allowed_toleration_key, []),
        capabilities=listed(args.allowed_capability, ["NET_BIND_SERVICE"]),
    )


def prometheus_headers(pairs: list[str], headers_file: str | None) -> dict[str, str]:
    """Headers from `NAME=VALUE` arguments and a file of `Name: value` lines."""
    headers: dict[str, str] = {}
    lines = [(p, "=") for p in pairs]
    if headers_file:
        with open(headers_file, encoding="utf-8") as handle:
            lines += [(line, ":") for line in handle.read().splitlines() if line.strip()]
    for text, sep in lines:
        name, found, value = text.partition(sep)
        if not found or not name.strip():
            raise SystemExit(f"a Prometheus header must be NAME{sep}VALUE, not {text!r}")
        headers[name.strip()] = value.strip()
    return headers


def history_source(
    url: str,
    headers: dict[str, str] | None = None,
    bearer_token_file: str | None = None,
    ca_file: str | None = None,
) -> PrometheusHistory:
    return PrometheusHistory(
        url, headers=headers, bearer_token_file=bearer_token_file, ca_file=ca_file
    )


def pooled_session(info: kopf.ConnectionInfo, connections: int) -> kopf.AiohttpSession:
    """kopf's API session with at most `connections` kept-alive connections.

    kopf's own session has no connection limit: when a round's 1,000 status patches go out
    at once, each opens its own TLS connection, and the handshakes cost the event loop more
    than the patches. A bounded pool queues them on connections that stay open.
    """
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=connections, keepalive_timeout=120, ssl=info.as_ssl_context()
        ),
        headers=info.as_http_headers(),
        proxy=info.proxy_url,
        trust_env=info.trust_env,
    )
    return kopf.AiohttpSession(
        server=info.server,
        default_namespace=info.default_namespace,
        priority=info.priority,
        expiration=info.expiration,
        aiohttp_session=session,
    )


def run_operator(args: argparse.Namespace) -> int:
    level = "DEBUG" if args.verbose else args.log_level
    logging.basicConfig(
        level=getattr(logging, level),
        format='{"time":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":%(message)r}',
    )
    logging.getLogger(__name__).info("demand history from Prometheus at %s", args.prometheus_url)
    if level != "DEBUG":
        # kopf logs every handler success per object at INFO: thousands of lines a minute.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        tenancy = tenancy_policy(args)
    except ValueError as error:
        raise SystemExit(f"peakwise operator run: {error}") from None
    templates = template_policy(args)
    memory.limit_arenas()  # before any thread starts: see memory.py
    interval = parse_duration(args.interval)
    registry = kopf.OperatorRegistry()
    register(registry, interval, commitment_advice=args.commitment_advice)
    client = api_client()
    history = history_source(
        args.prometheus_url,
        prometheus_headers(args.prometheus_header, args.prometheus_headers_file),
        args.prometheus_bearer_token_file,
        args.prometheus_ca_file,
    )
    kube = KubeAdapter(client)
    forecasts = ForecastService(
        history,
        default_forecaster,
        refit_every=parse_duration(args.refit_every),
        window=parse_duration(args.window),
        fit_workers=args.fit_workers,
        fit_timeout=parse_duration(args.fit_timeout),
        fit_pool=(
            partial(
                ProcessPoolExecutor,
                args.fit_workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=start_worker,
                initargs=(os.getpid(),),
            )
            if args.fit_in == "process"
            else None
        ),
    )
    metrics.fits_pending.set_function(forecasts.pending_fits)
    runtime = Runtime(
        controller=Controller(
            forecasts,
            interval,
            lambda: datetime.now(UTC),
            fit_wait=parse_duration(args.fit_wait),
            status_heartbeat=parse_duration(args.status_heartbeat),
            tenancy=tenancy,
            template_policy=templates,
            edges=RoundEdges(workloads=kube, prices=history, retention=CachedRetention(history)),
        ),
        actuator=Actuator(
            kube=kube,
            api_client=client,
            template_policy=templates,
            drain_timeout=parse_duration(args.drain_timeout),
        ),
        interval=interval,
        status_heartbeat=parse_duration(args.status_heartbeat),
    )

    @kopf.on.login(registry=registry)
    async def login(**kwargs: Any) -> kopf.AiohttpSession | None:
        # The same credentials as the kubernetes client: the pod's ServiceAccount or kubeconfig.
        info = kopf.login_via_client(**kwargs)
        return pooled_session(info, args.api_connections) if info else None

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.INFO
        settings.watching.server_timeout = 300
        settings.persistence.finalizer = "peakwise.dev/finalizer"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix="peakwise.dev"
        )
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="peakwise.dev"
        )
        if args.metrics_port:
            start_http_server(
                args.metrics_port, addr=args.listen_address, registry=metrics.REGISTRY
            )

    liveness = (
        f"http://{args.listen_address}:{args.liveness_port}/healthz" if args.liveness_port else None
    )
    try:
        asyncio.run(
            kopf.operator(
                registry=registry,
                memo=kopf.Memo(runtime=runtime),
                clusterwide=not args.namespace,
                namespaces=list(args.namespace),
                standalone=args.peering is None,
                peering_name=args.peering,
                priority=args.priority,
                liveness_endpoint=liveness,
            )
        )
    finally:
        runtime.controller.close()
        forecasts.close()
    return 0

"""`peakwise demo-view`: what the operator is doing, live in the terminal.

Reads the cluster (InferenceDeployments, CostBudgets, GPUNodePools and their Events) and,
when given a Prometheus URL, each service's current demand, every few seconds, and redraws
one screen: per service the forecast peak and when, replicas by tier, $/h; per namespace
the hourly spend against its budget; per pool the nodes; then the latest decisions with
their reasons. Everything shown comes from the objects' status and Events, so it is exactly
what `kubectl` would show. ``--once`` prints one screen and exits (tests, scripts).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from peakwise.adapters.prometheus import PrometheusHistory, PrometheusHistoryError
from peakwise.api.common import CAPACITY_TYPES
from peakwise.api.costbudget import CostBudget, CostBudgetSpec, CostBudgetStatus
from peakwise.api.errors import describe
from peakwise.api.gpunodepool import GPUNodePool, GPUNodePoolSpec, GPUNodePoolStatus
from peakwise.api.inferencedeployment import (
    ForecastStatus,
    InferenceDeployment,
    InferenceDeploymentStatus,
)

GROUP, VERSION = "peakwise.dev", "v1alpha1"
JSON = dict[str, Any]
RECENT = timedelta(minutes=5)
"""How far back "demand now" looks for the latest sample."""


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    mode: str
    priority: int
    demand_now: float | None
    peak: float | None
    peak_at: datetime | None
    quantile: float | None
    model: str
    ready: int
    desired: int
    tiers: dict[str, int]
    hourly: float
    budget_state: str
    state: str
    problem: str


@dataclass(frozen=True)
class Budget:
    namespace: str
    name: str
    enforcement: str
    hourly_limit: float | None
    hourly_spend: float
    spend: float
    monthly_limit: float | None
    state: str
    limited: list[str]


@dataclass(frozen=True)
class Pool:
    name: str
    capacity_type: str
    gpu_type: str
    nodes: int
    ready: int
    desired: int
    price: float


@dataclass(frozen=True)
class Decision:
    at: datetime | None
    kind: str
    namespace: str
    name: str
    type: str
    reason: str
    message: str
    count: int


@dataclass
class Snapshot:
    at: datetime
    services: list[Service] = field(default_factory=list)
    budgets: list[Budget] = field(default_factory=list)
    pools: list[Pool] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# --- reading -------------------------------------------------------------------------------


def _problem(error: ValidationError) -> str:
    return f"invalid: {describe(error)}"


def service_of(obj: JSON, demand_now: float | None = None) -> Service:
    """A service row from an InferenceDeployment as the API server holds it."""
    meta = obj.get("metadata") or {}
    status = InferenceDeploymentStatus.model_validate(obj.get("status") or {})
    mode: str
    try:
        spec = InferenceDeployment.model_validate(obj).spec
        mode, priority, problem = spec.mode, spec.priority, ""
    except ValidationError as error:
        raw = obj.get("spec") or {}
        mode, priority, problem = str(raw.get("mode", "?")), 0, _problem(error)
    conditions = {c.type: c for c in status.conditions}
    degraded, ready = conditions.get("Degraded"), conditions.get("Ready")
    if problem:
        state = "Invalid"
    elif not obj.get("status"):
        state = "Planning"
    elif degraded is not None and degraded.status == "True":
        state, problem = "Degraded", degraded.message
    else:
        state = ready.reason if ready is not None and ready.reason else "–"
    tiers: dict[str, int] = dict.fromkeys(CAPACITY_TYPES, 0)
    for row in status.pools:
        tiers[row.capacity_type] += row.desired_replicas
    forecast = status.forecast or ForecastStatus()
    return Service(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        mode=mode,
        priority=priority,
        demand_now=demand_now,
        peak=forecast.peak,
        peak_at=forecast.peak_at,
        quantile=forecast.quantile,
        model=forecast.model,
        ready=status.replicas,
        desired=status.desired_replicas,
        tiers=tiers,
        hourly=status.cost.hourly if status.cost else 0.0,
        budget_state=status.budget_state,
        state=state,
        problem=problem,
    )


def budget_of(obj: JSON) -> Budget:
    meta = obj.get("metadata") or {}
    status = CostBudgetStatus.model_validate(obj.get("status") or {})
    try:
        spec: CostBudgetSpec | None = CostBudget.model_validate(obj).spec
    except ValidationError:
        spec = None
    return Budget(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        enforcement=spec.enforcement if spec else "invalid",
        hourly_limit=spec.limits.hourly if spec else None,
        hourly_spend=status.hourly_spend,
        spend=status.spend,
        monthly_limit=spec.limits.monthly if spec else None,
        state=status.state,
        limited=status.limited_deployments,
    )


def pool_of(obj: JSON) -> Pool:
    status = GPUNodePoolStatus.model_validate(obj.get("status") or {})
    try:
        spec: GPUNodePoolSpec | None = GPUNodePool.model_validate(obj).spec
    except ValidationError:
        spec = None
    return Pool(
        name=str((obj.get("metadata") or {}).get("name", "")),
        capacity_type=spec.capacity_type if spec else "invalid",
        gpu_type=spec.gpu_type if spec else "",
        nodes=status.nodes,
        ready=status.ready_nodes,
        desired=status.desired_nodes,
        price=spec.price_per_node_hour if spec else 0.0,
    )


def _time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def decision_of(event: JSON) -> Decision:
    involved = event.get("involvedObject") or event.get("involved_object") or {}
    at = (
        _time(event.get("lastTimestamp"))
        or _time(event.get("eventTime"))
        or _time(event.get("firstTimestamp"))
        or _time((event.get("metadata") or {}).get("creationTimestamp"))
    )
    return Decision(
        at=at,
        kind=str(involved.get("kind", "")),
        namespace=str(involved.get("namespace") or ""),
        name=str(involved.get("name", "")),
        type=str(event.get("type", "")),
        reason=str(event.get("reason", "")),
        message=" ".join(str(event.get("message", "")).split()),
        count=int(event.get("count") or 1),
    )


class ClusterReader:
    """Lists the Peakwise objects and their Events through the Kubernetes API, and each
    service's current demand through the Prometheus adapter."""

    def __init__(self, kubeconfig: str | None, prometheus_url: str | None = None) -> None:
        from kubernetes import client, config

        api: Any = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig or None
        )
        self._api = api
        self._custom: Any = client.CustomObjectsApi(api)
        self._core: Any = client.CoreV1Api(api)
        self._prometheus = (
            PrometheusHistory(prometheus_url, timeout_seconds=5.0, retries=0)
            if prometheus_url
            else None
        )

    def _list(self, plural: str) -> list[JSON]:
        body: JSON = self._custom.list_cluster_custom_object(GROUP, VERSION, plural)
        return list(body.get("items", []))

    def _demand(self, obj: JSON, now: datetime, errors: list[str]) -> float | None:
        query = ((obj.get("spec") or {}).get("demand") or {}).get("query")
        if self._prometheus is None or not query:
            return None
        try:
            series = self._prometheus.fetch(str(query), now - RECENT, now, 60)
        except (PrometheusHistoryError, ValueError) as error:
            errors.append(f"prometheus: {error}")
            return None
        known = series.values[~np.isnan(series.values)]
        return float(known[-1]) if known.size else None

    def snapshot(self, events: int = 8) -> Snapshot:
        snap = Snapshot(at=datetime.now(UTC))
        try:
            for obj in self._list("inferencedeployments"):
                snap.services.append(service_of(obj, self._demand(obj, snap.at, snap.errors)))
            snap.budgets = [budget_of(o) for o in self._list("costbudgets")]
            snap.pools = [pool_of(o) for o in self._list("gpunodepools")]
            listed = self._core.list_event_for_all_namespaces(limit=500)
            serialized: JSON = self._api.sanitize_for_serialization(listed)
            raw: list[JSON] = serialized.get("items", [])
            ours = [
                decision_of(e)
                for e in raw
                if str((e.get("involvedObject") or {}).get("apiVersion", "")).startswith(GROUP)
            ]
            ours.sort(key=lambda d: d.at or datetime.min.replace(tzinfo=UTC), reverse=True)
            snap.decisions = ours[:events]
        except Exception as error:  # the view keeps running through API hiccups
            snap.errors.append(f"kubernetes: {type(error).__name__}: {str(error)[:200]}")
        snap.services.sort(key=lambda s: (s.namespace, -s.priority, s.name))
        snap.budgets.sort(key=lambda b: (b.namespace, b.name))
        tier_order = {"reserved": 0, "spot": 1, "onDemand": 2}
        snap.pools.sort(key=lambda p: (tier_order.get(p.capacity_type, 3), p.name))
        return snap


# --- drawing -------------------------------------------------------------------------------


def _rate(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}/s" if value >= 100 else f"{value:,.1f}/s"


def _money(value: float | None) -> str:
    return "–" if value is None else f"${value:,.2f}"


def _when(at: datetime | None, now: datetime) -> str:
    if at is None:
        return "–"
    minutes = round((at - now).total_seconds() / 60)
    rel = "now" if minutes == 0 else (f"in {minutes}m" if minutes > 0 else f"{-minutes}m ago")
    return f"{at:%H:%M} ({rel})"


def _bar(fraction: float, width: int) -> Text:
    filled = max(0, min(width, round(fraction * width)))
    style = "red" if fraction >= 1.0 else ("yellow" if fraction >= 0.8 else "green")
    return Text("█" * filled + "·" * (width - filled), style=style)


STATE_STYLES = {
    "Degraded": "red",
    "Invalid": "red",
    "AllReady": "green",
    "Limited": "red",
    "Warning": "yellow",
    "Exceeded": "red",
    "Enforce": "cyan",
    "Recommend": "dim",
}


def _styled(text: str) -> Text:
    return Text(text, style=STATE_STYLES.get(text, ""))


def _table(header: Sequence[str], right: set[int]) -> Table:
    """A borderless table: columns padded to their widest cell, never wrapped."""
    table = Table(box=None, show_edge=False, pad_edge=False, header_style="dim", expand=False)
    for i, name in enumerate(header):
        table.add_column(name, justify="right" if i in right else "left", no_wrap=True)
    return table


def _services(snap: Snapshot) -> Table | Text:
    header = ["SERVICE", "MODE", "DEMAND NOW", "FORECAST PEAK", "WINDOW FROM", "READY/PLAN"]
    header += ["RESERVED", "SPOT", "ON-DEMAND", "$/H", "BUDGET", "STATE"]
    table = _table(header, {2, 3, 5, 6, 7, 8, 9})
    for s in snap.services:
        replicas = f"{s.ready}/{s.desired}" if s.mode == "Enforce" else f"–/{s.desired}"
        q = f" q{s.quantile:.2f}".replace("0.", ".") if s.quantile else ""
        table.add_row(
            f"{s.namespace}/{s.name}",
            _styled(s.mode),
            _rate(s.demand_now),
            Text(_rate(s.peak)) + Text(q, style="dim"),
            _when(s.peak_at, snap.at),
            replicas,
            str(s.tiers["reserved"]),
            str(s.tiers["spot"]),
            str(s.tiers["onDemand"]),
            _money(s.hourly),
            _styled(s.budget_state or "–"),
            _styled(s.state),
        )
    return table if snap.services else Text("  (none yet)")


def _budgets(snap: Snapshot) -> Table | Text:
    header = ["BUDGET", "KIND", "$/H NOW", "LIMIT $/H", "USE", "SPENT THIS PERIOD", "STATE"]
    table = _table([*header, "LIMITED"], {2, 3})
    for b in snap.budgets:
        fraction = b.hourly_spend / b.hourly_limit if b.hourly_limit else 0.0
        use = _bar(fraction, 20) + Text(f" {fraction:4.0%}") if b.hourly_limit else Text("")
        spent = _money(b.spend) + (f" of {_money(b.monthly_limit)}" if b.monthly_limit else "")
        table.add_row(
            f"{b.namespace}/{b.name}",
            b.enforcement,
            _money(b.hourly_spend),
            _money(b.hourly_limit),
            use,
            spent,
            _styled(b.state or "–"),
            ", ".join(b.limited),
        )
    return table if snap.budgets else Text("  (none)")


def _pools(snap: Snapshot) -> Table | Text:
    header = ["POOL", "TIER", "GPU", "READY/NODES", "PLANNED", "$/NODE-H", "$/H"]
    table = _table(header, {3, 4, 5, 6})
    for p in snap.pools:
        table.add_row(
            p.name,
            p.capacity_type,
            p.gpu_type,
            f"{p.ready}/{p.nodes}",
            str(p.desired),
            _money(p.price),
            _money(p.price * p.nodes),
        )
    return table if snap.pools else Text("  (none)")


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def render(snap: Snapshot, width: int = 120, color: bool = False) -> str:
    """One screen of text for the snapshot (ANSI colours only with `color`)."""
    console = Console(
        width=width,
        file=io.StringIO(),
        force_terminal=color,
        no_color=not color,
        color_system="standard" if color else None,
        highlight=False,
        emoji=False,
    )
    now = snap.at
    title = Text("Peakwise", style="bold")
    title += Text(f" — live view of the operator   {now:%Y-%m-%d %H:%M:%S} UTC   ")
    title += Text("Ctrl-C to stop", style="dim")
    console.print(title)
    console.print()
    console.print(
        Text("Inference deployments", style="bold")
        + Text(
            "  (forecast peak: a quantile of the peak demand in the window that opens one"
            " lead time from now)",
            style="dim",
        )
    )
    console.print(_services(snap))
    for s in snap.services:
        if s.problem:
            console.print(Text(_clip(f"  {s.namespace}/{s.name}: {s.problem}", width), "red"))
    console.print()
    console.print(
        Text("Budgets", style="bold")
        + Text("  ($/h of the plans against the hourly limit)", style="dim")
    )
    console.print(_budgets(snap))
    console.print()
    console.print(Text("GPU node pools", style="bold"))
    console.print(_pools(snap))
    console.print()
    console.print(
        Text("Latest decisions", style="bold") + Text("  (Events, newest first)", style="dim")
    )
    for d in snap.decisions:
        at = f"{d.at:%H:%M:%S}" if d.at else "--:--:--"
        who = f"{d.namespace}/{d.name}" if d.namespace and d.kind != "GPUNodePool" else d.name
        reason = Text(d.reason, style="yellow" if d.type == "Warning" else "green")
        times = f" ×{d.count}" if d.count > 1 else ""
        console.print(Text(f"{at}  {who}  ") + reason + Text(times))
        lines = textwrap.wrap(d.message, max(40, width - 12))
        if len(lines) > 3:
            lines = [*lines[:2], _clip(lines[2] + " …", max(40, width - 12))]
        for line in lines:
            console.print(Text("          " + line, style="dim"))
    if not snap.decisions:
        console.print("  (none yet)")
    for error in snap.errors:
        console.print(Text(_clip(f"! {error}", width), style="red"))
    out = console.file
    assert isinstance(out, io.StringIO)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines()) + "\n"


# --- command -------------------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo-view",
        help="show live what the operator does (forecasts, replicas by tier, $/h, decisions)",
        description="Redraw, every few seconds, the forecast peak and replicas by tier of every "
        "InferenceDeployment, each namespace's $/h against its CostBudget, the GPU pools, and "
        "the latest decisions with their reasons (from status and Events).",
    )
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube)")
    p.add_argument(
        "--prometheus-url",
        default=os.environ.get("PEAKWISE_PROMETHEUS_URL"),
        help="also show each service's current demand (default: $PEAKWISE_PROMETHEUS_URL)",
    )
    p.add_argument("--interval", type=float, default=3.0, help="seconds between redraws (3)")
    p.add_argument("--events", type=int, default=8, help="how many decisions to show (8)")
    p.add_argument("--once", action="store_true", help="print one screen and exit")
    p.set_defaults(run=run_view)


def run_view(args: argparse.Namespace, sleep: Callable[[float], None] = time.sleep) -> int:
    reader = ClusterReader(args.kubeconfig, args.prometheus_url)
    color = sys.stdout.isatty()
    if args.once:
        width = shutil.get_terminal_size((120, 40)).columns
        sys.stdout.write(render(reader.snapshot(args.events), width, color))
        return 0
    try:
        sys.stdout.write("\033[?25l")  # hide the cursor while redrawing
        while True:
            snap = reader.snapshot(args.events)
            width = shutil.get_terminal_size((120, 40)).columns
            sys.stdout.write("\033[H\033[2J" + render(snap, width, color))
            sys.stdout.flush()
            sleep(args.interval)
    except KeyboardInterrupt:
        return 0
    finally:
        sys.stdout.write("\033[?25h\n")
        sys.stdout.flush()

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
import json
import os
import shutil
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

GROUP, VERSION = "peakwise.dev", "v1alpha1"
JSON = dict[str, Any]


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


def _time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _tiers(text: str) -> dict[str, int]:
    out = {"reserved": 0, "spot": 0, "onDemand": 0}
    for item in text.split():
        key, _, value = item.partition("=")
        if key in out and value.isdigit():
            out[key] = int(value)
    return out


def service_of(obj: JSON, demand_now: float | None = None) -> Service:
    meta, spec, status = obj["metadata"], obj.get("spec", {}), obj.get("status") or {}
    forecast = status.get("forecast") or {}
    conditions = {c.get("type"): c for c in status.get("conditions", [])}
    problem = ""
    degraded = conditions.get("Degraded", {})
    ready = conditions.get("Ready", {})
    if not status:
        state = "Planning"
    elif degraded.get("status") == "True":
        state, problem = "Degraded", str(degraded.get("message", ""))
    else:
        state = str(ready.get("reason", "")) or "–"
    return Service(
        namespace=meta.get("namespace", ""),
        name=meta["name"],
        mode=str(spec.get("mode", "Recommend")),
        priority=int(spec.get("priority", 100)),
        demand_now=demand_now,
        peak=_num(forecast.get("peak")),
        peak_at=_time(forecast.get("peakAt")),
        quantile=_num(forecast.get("quantile")),
        model=str(forecast.get("model", "")),
        ready=int(status.get("replicas", 0)),
        desired=int(status.get("desiredReplicas", 0)),
        tiers=_tiers(str(status.get("tiers", ""))),
        hourly=float((status.get("cost") or {}).get("hourly", 0.0)),
        budget_state=str(status.get("budgetState", "")),
        state=state,
        problem=problem,
    )


def budget_of(obj: JSON) -> Budget:
    meta, spec, status = obj["metadata"], obj.get("spec", {}), obj.get("status") or {}
    limits = spec.get("limits", {})
    return Budget(
        namespace=meta.get("namespace", ""),
        name=meta["name"],
        enforcement=str(spec.get("enforcement", "Hard")),
        hourly_limit=_num(limits.get("hourly")),
        hourly_spend=float(status.get("hourlySpend", 0.0)),
        spend=float(status.get("spend", 0.0)),
        monthly_limit=_num(limits.get("monthly")),
        state=str(status.get("state", "")),
        limited=[str(x) for x in status.get("limitedDeployments", [])],
    )


def pool_of(obj: JSON) -> Pool:
    spec, status = obj.get("spec", {}), obj.get("status") or {}
    return Pool(
        name=obj["metadata"]["name"],
        capacity_type=str(spec.get("capacityType", "")),
        gpu_type=str(spec.get("gpuType", "")),
        nodes=int(status.get("nodes", 0)),
        ready=int(status.get("readyNodes", 0)),
        desired=int(status.get("desiredNodes", 0)),
        price=float(spec.get("pricePerNodeHour", 0.0)),
    )


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


def prometheus_value(url: str, query: str, timeout: float = 5.0) -> float | None:
    """The query's value now (the sum over its series), or None when it has none."""
    params = urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(f"{url.rstrip('/')}/api/v1/query?{params}", timeout=timeout) as r:
        body = json.loads(r.read())
    result = body.get("data", {}).get("result", [])
    if body.get("data", {}).get("resultType") == "scalar":
        return float(result[1])
    values = [float(item["value"][1]) for item in result]
    return sum(values) if values else None


class ClusterReader:
    """Lists the Peakwise objects and their Events through the Kubernetes API."""

    def __init__(self, kubeconfig: str | None, prometheus_url: str | None = None) -> None:
        from kubernetes import client, config

        api: Any = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig or None
        )
        self._api = api
        self._custom: Any = client.CustomObjectsApi(api)
        self._core: Any = client.CoreV1Api(api)
        self.prometheus_url = prometheus_url

    def _list(self, plural: str) -> list[JSON]:
        body: JSON = self._custom.list_cluster_custom_object(GROUP, VERSION, plural)
        return list(body.get("items", []))

    def _demand(self, obj: JSON, errors: list[str]) -> float | None:
        query = (obj.get("spec", {}).get("demand") or {}).get("query")
        if not self.prometheus_url or not query:
            return None
        try:
            return prometheus_value(self.prometheus_url, str(query))
        except (OSError, ValueError, KeyError, IndexError) as error:
            errors.append(f"prometheus: {error}")
            return None

    def snapshot(self, events: int = 8) -> Snapshot:
        snap = Snapshot(at=datetime.now(UTC))
        try:
            for obj in self._list("inferencedeployments"):
                snap.services.append(service_of(obj, self._demand(obj, snap.errors)))
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


@dataclass(frozen=True)
class Style:
    color: bool

    def _wrap(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color and text else text

    def bold(self, text: str) -> str:
        return self._wrap("1", text)

    def dim(self, text: str) -> str:
        return self._wrap("2", text)

    def green(self, text: str) -> str:
        return self._wrap("32", text)

    def yellow(self, text: str) -> str:
        return self._wrap("33", text)

    def red(self, text: str) -> str:
        return self._wrap("31", text)

    def cyan(self, text: str) -> str:
        return self._wrap("36", text)


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


def _bar(fraction: float, width: int, style: Style) -> str:
    filled = max(0, min(width, round(fraction * width)))
    text = "█" * filled + "·" * (width - filled)
    if fraction >= 1.0:
        return style.red(text)
    return style.yellow(text) if fraction >= 0.8 else style.green(text)


def _table(
    header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int], style: Style
) -> list[str]:
    """Columns padded to their widest cell (ANSI codes in cells do not count)."""

    def visible(cell: str) -> int:
        out, skip = 0, False
        for ch in cell:
            if ch == "\033":
                skip = True
            elif skip and ch == "m":
                skip = False
            elif not skip:
                out += 1
        return out

    widths = [max([len(h)] + [visible(r[i]) for r in rows]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        parts = []
        for i, cell in enumerate(cells):
            pad = " " * (widths[i] - visible(cell))
            parts.append(pad + cell if i in right else cell + pad)
        return "  ".join(parts).rstrip()

    return [style.dim(line(header)), *(line(r) for r in rows)]


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def render(snap: Snapshot, width: int = 120, color: bool = False) -> str:
    """One screen of text for the snapshot."""
    style = Style(color)
    now = snap.at
    out = [
        style.bold("Peakwise")
        + f" — live view of the operator   {now:%Y-%m-%d %H:%M:%S} UTC   "
        + style.dim("Ctrl-C to stop"),
        "",
        style.bold("Inference deployments")
        + style.dim(
            "  (forecast peak: a quantile of the peak demand in the window that opens one"
            " lead time from now)"
        ),
    ]
    rows = []
    for s in snap.services:
        mode = style.cyan(s.mode) if s.mode == "Enforce" else style.dim(s.mode)
        replicas = f"{s.ready}/{s.desired}" if s.mode == "Enforce" else f"–/{s.desired}"
        budget = s.budget_state or "–"
        if budget == "Limited":
            budget = style.red(budget)
        elif budget == "Warning":
            budget = style.yellow(budget)
        state = s.state
        if s.state == "Degraded":
            state = style.red(state)
        elif s.state == "AllReady":
            state = style.green(state)
        q = f" q{s.quantile:.2f}".replace("0.", ".") if s.quantile else ""
        rows.append(
            [
                f"{s.namespace}/{s.name}",
                mode,
                _rate(s.demand_now),
                _rate(s.peak) + style.dim(q),
                _when(s.peak_at, now),
                replicas,
                str(s.tiers["reserved"]),
                str(s.tiers["spot"]),
                str(s.tiers["onDemand"]),
                _money(s.hourly),
                budget,
                state,
            ]
        )
    header = ["SERVICE", "MODE", "DEMAND NOW", "FORECAST PEAK", "WINDOW FROM", "READY/PLAN"]
    header += ["RESERVED", "SPOT", "ON-DEMAND", "$/H", "BUDGET", "STATE"]
    out += _table(header, rows, {2, 3, 5, 6, 7, 8, 9}, style) if rows else ["  (none yet)"]
    for s in snap.services:
        if s.problem:
            out.append(style.red(_clip(f"  {s.namespace}/{s.name}: {s.problem}", width)))

    out += ["", style.bold("Budgets") + style.dim("  ($/h of the plans against the hourly limit)")]
    rows = []
    for b in snap.budgets:
        fraction = b.hourly_spend / b.hourly_limit if b.hourly_limit else 0.0
        state = b.state or "–"
        if state == "Exceeded":
            state = style.red(state)
        elif state == "Warning":
            state = style.yellow(state)
        rows.append(
            [
                f"{b.namespace}/{b.name}",
                b.enforcement,
                _money(b.hourly_spend),
                _money(b.hourly_limit),
                _bar(fraction, 20, style) + f" {fraction:4.0%}" if b.hourly_limit else "",
                _money(b.spend) + (f" of {_money(b.monthly_limit)}" if b.monthly_limit else ""),
                state,
                ", ".join(b.limited),
            ]
        )
    header = ["BUDGET", "KIND", "$/H NOW", "LIMIT $/H", "USE", "SPENT THIS PERIOD", "STATE"]
    header += ["LIMITED"]
    out += _table(header, rows, {2, 3}, style) if rows else ["  (none)"]

    out += ["", style.bold("GPU node pools")]
    rows = [
        [
            p.name,
            p.capacity_type,
            p.gpu_type,
            f"{p.ready}/{p.nodes}",
            str(p.desired),
            _money(p.price),
            _money(p.price * p.nodes),
        ]
        for p in snap.pools
    ]
    header = ["POOL", "TIER", "GPU", "READY/NODES", "PLANNED", "$/NODE-H", "$/H"]
    out += _table(header, rows, {3, 4, 5, 6}, style) if rows else ["  (none)"]

    out += ["", style.bold("Latest decisions") + style.dim("  (Events, newest first)")]
    for d in snap.decisions:
        at = f"{d.at:%H:%M:%S}" if d.at else "--:--:--"
        who = f"{d.namespace}/{d.name}" if d.namespace and d.kind != "GPUNodePool" else d.name
        reason = style.yellow(d.reason) if d.type == "Warning" else style.green(d.reason)
        times = f" ×{d.count}" if d.count > 1 else ""
        prefix = f"{at}  {who}  "
        out.append(prefix + reason + times)
        lines = textwrap.wrap(d.message, max(40, width - 12))
        if len(lines) > 3:
            lines = [*lines[:2], _clip(lines[2] + " …", max(40, width - 12))]
        out += [style.dim("          " + line) for line in lines]
    if not snap.decisions:
        out.append("  (none yet)")
    for error in snap.errors:
        out.append(style.red(_clip(f"! {error}", width)))
    return "\n".join(out) + "\n"


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

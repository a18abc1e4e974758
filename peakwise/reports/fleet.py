"""What a fleet backtest prints and writes: a table per namespace and for the fleet, the cost
of a million tokens, the commitment advice, and the per-minute CSVs."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from concurrent.futures import Executor
from datetime import timedelta
from pathlib import Path

from peakwise.backtest.advice import Advice
from peakwise.backtest.fleet import FLEET, FleetResult, FleetRun, ScopeSummary, TokenCost
from peakwise.forecasting.series import FloatArray
from peakwise.reports.backtest import CSV_COLUMNS
from peakwise.reports.tables import new_table, render


def scope_title(result: FleetResult, scope: str) -> str:
    """'Namespace chat: 2 services; Hard budget 400/h, 200,000/month; priority 300'."""
    if scope == FLEET:
        return (
            f"Fleet: {len(result.services)} services in {len(result.fleet.namespaces())} "
            f"namespaces on {len(result.fleet.pools)} pools"
        )
    services = sum(1 for k in result.services if k[0] == scope)
    spec = result.fleet.budget(scope)
    if spec is None:
        limits = "no CostBudget: the operator would recommend only (fail closed); replayed uncapped"
    else:
        caps = [
            f"{v:,.0f}/{unit}"
            for v, unit in ((spec.limits.hourly, "h"), (spec.limits.monthly, "month"))
            if v is not None
        ]
        limits = (
            f"{spec.enforcement} budget {', '.join(caps)} {spec.currency}; priority {spec.priority}"
        )
    return f"Namespace {scope}: {services} service(s); {limits}"


def peak_rate(s: ScopeSummary) -> str:
    """The peak billed $/h, and what the planner costed its plans at when it planned."""
    if s.peak_planned_hourly is None:
        return f"{s.peak_billed_hourly:,.1f}"
    return f"{s.peak_billed_hourly:,.1f} (plan {s.peak_planned_hourly:,.1f})"


SUMMARY_HEADER = (
    "policy",
    "cost",
    "× oracle",
    "under-prov.",
    "worst service",
    "unserved",
    "peak $/h",
    "over cap",
    "month at this rate",
    "notes",
)
"""The columns of a scope's table, in the terminal and in the HTML report."""


def scope_table(result: FleetResult, scope: str) -> str:
    rows = new_table(
        SUMMARY_HEADER,
        title=scope_title(result, scope),
    )
    rows.columns[4].justify = "left"
    for s in (x for x in result.summaries if x.scope == scope):
        cap = "" if s.hourly_cap is None else f"{s.minutes_over_cap:,} min"
        month = f"${s.monthly_projection:,.0f}"
        if s.monthly_limit is not None:
            month += f" / {s.monthly_limit:,.0f}"
        note = s.note
        if s.budget_limited_minutes:
            note = f"budget-limited {s.budget_limited_minutes:,} min; " + note
        rows.add_row(
            s.policy,
            f"${s.cost:,.0f}",
            f"{s.cost_vs_oracle:.2f}",
            f"{s.under_provisioned:.2%}",
            f"{s.worst_service} {s.worst_under_provisioned:.2%}" if s.worst_service else "",
            f"{s.unserved:.3%}",
            peak_rate(s),
            cap,
            month,
            note,
        )
    return render(rows)


def fleet_tables(result: FleetResult) -> str:
    """One table per namespace, then the fleet's."""
    measured = result.minutes - result.warmup_minutes
    first = result.start + timedelta(minutes=result.warmup_minutes)
    head = (
        f"Measured {measured:,} minutes from {first:%Y-%m-%d %H:%M} "
        f"UTC after a {result.warmup_minutes:,}-minute warm-up; cost is each namespace's share "
        "of the nodes it held; peak $/h and the month count spot and on-demand nodes as billed "
        "(what a budget accrues), with the planner's own costing of its plans in brackets "
        "(replicas at their share of a node: what a Hard cap limits); under-provisioned: share "
        "of service-minutes with less ready capacity than demand."
    )
    parts = [head]
    for scope in result.scopes():
        parts.append(scope_table(result, scope))
    return "\n\n".join(parts)


def token_table(costs: Sequence[TokenCost], api_price: float | None) -> str:
    """Cost per million tokens served per service, against an API's price if given."""
    if not costs:
        return ""
    columns = ["service", "tokens served", "cost", "$ per M tokens"]
    if api_price is not None:
        columns += [f"vs API ${api_price:g}/M"]
    rows = new_table(columns, title="Cost per million tokens served (Peakwise)")
    for c in costs:
        row = [
            f"{c.key[0]}/{c.key[1]}",
            f"{c.tokens_served / 1e6:,.1f} M",
            f"${c.cost:,.0f}",
            f"{c.per_million:,.3f}" if math.isfinite(c.per_million) else "",
        ]
        if api_price is not None:
            ratio = c.per_million / api_price if math.isfinite(c.per_million) else math.nan
            if not math.isfinite(ratio):
                row.append("")
            elif ratio <= 1:
                row.append(f"{1 / ratio:.2f}x cheaper to self-host")
            else:
                row.append(f"{ratio:.2f}x dearer to self-host")
        rows.add_row(*row)
    return render(rows)


def advice_text(advice: Advice) -> str:
    """The advice for one GPU type: each term's optimum and the cost curve around it."""
    best = advice.best
    rows = new_table(
        (
            "term",
            "$/node-h",
            "nodes",
            "monthly cost",
            "saving vs none",
            "break-even vs on-demand",
            "vs spot",
            "last node busy",
        ),
        title=f"Commitment advice: {advice.gpu_type}, {advice.market.gpus_per_node} GPUs a node",
    )
    for term in advice.terms:
        rows.add_row(
            term.term + (" *" if term is best else ""),
            f"{term.price_per_node_hour:,.2f}",
            f"{term.nodes}",
            f"${term.monthly_cost:,.0f}",
            f"${term.saving:,.0f}",
            f"{term.break_even_on_demand:.0%}",
            f"{term.break_even_spot:.0%}" if term.break_even_spot is not None else "",
            f"{term.last_node_busy:.0%}",
        )
    curve = new_table(("nodes", "monthly cost", "vs best"), title=f"Cost curve ({best.term})")
    for point in best.curve:
        delta = point.monthly_cost / best.monthly_cost - 1 if best.monthly_cost > 0 else 0.0
        curve.add_row(f"{point.nodes}", f"${point.monthly_cost:,.0f}", f"{delta:+.1%}")
    lines = [render(rows), render(curve), advice.summary() + "."]
    lines += [f"  - {a}" for a in advice.assumptions]
    return "\n".join(lines)


def write_fleet_csvs(
    result: FleetResult, out_dir: str | Path, executor: Executor | None = None
) -> list[Path]:
    """``DIR/<namespace>/<name>/<policy>.csv`` per service and policy (the backtest output
    contract's columns; ``cost_usd`` is the service's share of the minute's bill), and
    ``DIR/fleet-cost.csv``: every policy's fleet cost per minute. With `executor`, each
    policy's files are written by a job of their own."""
    out = Path(out_dir)
    stamps = [
        (result.start + timedelta(minutes=t)).strftime("%Y-%m-%dT%H:%M:%SZ")
        for t in range(result.minutes)
    ]
    if executor is None:
        written = [write_run_csvs(run, stamps, out) for run in result.runs]
    else:
        jobs = [executor.submit(write_run_csvs, run, stamps, out) for run in result.runs]
        written = [job.result() for job in jobs]
    paths = [path for run_paths in written for path in run_paths]
    path = out / "fleet-cost.csv"
    totals = [run.total_cost() for run in result.runs]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("timestamp", *(f"{run.name}_usd" for run in result.runs)))
        columns = [[f"{c:.4f}" for c in total.tolist()] for total in totals]
        writer.writerows(zip(stamps, *columns, strict=True))
    paths.append(path)
    return paths


def write_run_csvs(run: FleetRun, stamps: Sequence[str], out: Path) -> list[Path]:
    """One policy's ``<namespace>/<name>/<policy>.csv`` files under `out`."""
    paths = []
    for (namespace, name), s in run.services.items():
        folder = out / namespace / name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{run.name}.csv"
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            # Whole columns formatted at once (as Python numbers: formatting numpy scalars
            # one by one is most of the time of millions of rows).
            writer.writerows(
                zip(
                    stamps,
                    _nums(s.demand),
                    _nums(s.forecast),
                    _nums(s.capacity),
                    s.replicas["reserved"].tolist(),
                    s.replicas["spot"].tolist(),
                    s.replicas["onDemand"].tolist(),
                    [f"{c:.4f}" for c in s.cost.tolist()],
                    strict=True,
                )
            )
        paths.append(path)
    return paths


def _nums(values: FloatArray) -> list[str]:
    """Each value to 3 decimals, NaN as empty."""
    isnan = math.isnan
    return ["" if isnan(v) else f"{v:.3f}" for v in values.tolist()]

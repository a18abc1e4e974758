"""The fleet backtest's report: one self-contained HTML file, viewable offline.

Everything is inside the file: the styles, the tables and the plots (PNG images drawn by
matplotlib, embedded as data: URLs). No script, no font or stylesheet from a network: it
opens the same from a laptop, an e-mail attachment or a CI artifact.

Sections: the fleet (every policy's cost, shortfall and budget use; cumulative cost), the
commitment advice (each term's optimum, the cost curve around it), the cost of a million
tokens served, then one section per namespace: its table, each service's demand, forecast
and Peakwise's ready capacity by tier, the namespace's cumulative cost and its spend rate
against its budget.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from peakwise.backtest.advice import Advice
from peakwise.backtest.fleet import FLEET, FleetResult, Key, TokenCost
from peakwise.forecasting.series import FloatArray
from peakwise.reports.fleet import SUMMARY_HEADER, peak_rate, scope_title

MAX_POINTS = 1500
"""Points per line in a plot: each bucket of minutes is drawn as its highest value, so peaks
and shortfalls stay visible however long the history."""

COLORS = {
    "static-peak": "#937860",
    "reactive": "#8c8c8c",
    "reactive-tuned": "#8172b2",
    "hpa-70%": "#64b5cd",
    "reactive-tiered-tuned": "#da8bc3",
    "peakwise": "#c44e52",
    "oracle": "#4c72b0",
}
TIER_COLORS = {"reserved": "#4c72b0", "spot": "#55a868", "onDemand": "#dd8452"}
TIER_LABELS = {"reserved": "reserved", "spot": "spot", "onDemand": "on-demand"}

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { padding: 0.25em 0.6em; border-bottom: 1px solid #e4e4e4; text-align: right; }
th { background: #f4f4f4; } td.text, th.text { text-align: left; }
tr.peakwise td { font-weight: 600; background: #fbeff0; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; }
figcaption { font-size: 0.85em; color: #555; }
nav a { margin-right: 1em; } .note { color: #555; font-size: 0.9em; }
ul.assumptions { font-size: 0.9em; color: #444; }
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _table(
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    text_columns: int = 1,
    highlight: str | None = None,
    caption: str | None = None,
) -> str:
    def cell(tag: str, i: int, value: str) -> str:
        klass = ' class="text"' if i < text_columns or i == len(header) - 1 else ""
        return f"<{tag}{klass}>{_esc(value)}</{tag}>"

    out = ["<table>"]
    if caption:
        out.append(f"<caption>{_esc(caption)}</caption>")
    out.append("<tr>" + "".join(cell("th", i, h) for i, h in enumerate(header)) + "</tr>")
    for row in rows:
        klass = ' class="peakwise"' if highlight is not None and row[0] == highlight else ""
        out.append(f"<tr{klass}>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _figure(fig: Any, name: str, caption: str) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (
        f'<figure><img class="plot" data-plot="{_esc(name)}" alt="{_esc(caption)}" '
        f'src="data:image/png;base64,{data}"><figcaption>{_esc(caption)}</figcaption></figure>'
    )


def _bucketed(values: FloatArray, size: int) -> FloatArray:
    """The highest value of each bucket of `size` minutes (NaN where all are NaN)."""
    if size <= 1:
        return values
    count = -(-values.shape[0] // size)
    padded = np.full(count * size, np.nan)
    padded[: values.shape[0]] = values
    buckets = padded.reshape(count, size)
    known = ~np.isnan(buckets)
    top: FloatArray = np.where(known, buckets, -np.inf).max(axis=1)
    return np.where(known.any(axis=1), top, np.nan)


def _days(result: FleetResult, size: int, count: int) -> FloatArray:
    return np.arange(count) * size / 1440.0


def _summary_rows(result: FleetResult, scope: str) -> list[list[str]]:
    rows = []
    for s in (x for x in result.summaries if x.scope == scope):
        month = f"${s.monthly_projection:,.0f}"
        if s.monthly_limit is not None:
            month += f" / {s.monthly_limit:,.0f}"
        rows.append(
            [
                s.policy,
                f"${s.cost:,.0f}",
                f"{s.cost_vs_oracle:.2f}",
                f"{s.under_provisioned:.2%}",
                f"{s.worst_service} {s.worst_under_provisioned:.2%}" if s.worst_service else "",
                f"{s.unserved:.3%}",
                peak_rate(s),
                "" if s.hourly_cap is None else f"{s.minutes_over_cap:,} min",
                month,
                (
                    f"budget-limited {s.budget_limited_minutes:,} min; "
                    if s.budget_limited_minutes
                    else ""
                )
                + s.note,
            ]
        )
    return rows


def _cumulative_cost_figure(result: FleetResult, scope: str) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 3.6))
    w = result.warmup_minutes
    for run in result.runs:
        keys = [k for k in run.services if scope == FLEET or k[0] == scope]
        cost = np.sum([run.services[k].cost for k in keys], axis=0)
        if scope == FLEET:
            cost = cost + run.unattributed
        cumulative = np.cumsum(cost[w:])
        size = max(1, cumulative.shape[0] // MAX_POINTS)
        points = cumulative[size - 1 :: size]
        ax.plot(
            np.arange(points.shape[0]) * size / 1440.0,
            points,
            label=run.name,
            color=COLORS.get(run.name),
            lw=1.4 if run.name == "peakwise" else 1.0,
        )
    ax.set_xlabel("days after the warm-up")
    ax.set_ylabel("USD")
    ax.set_title(f"Cumulative cost: {'the fleet' if scope == FLEET else scope}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=4)
    fig.tight_layout()
    return _figure(
        fig,
        f"cumulative-cost-{scope}",
        f"Cumulative cost of every policy ({scope}), measured minutes",
    )


def _budget_figure(result: FleetResult, scope: str) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 3.0))
    size = max(1, result.minutes // MAX_POINTS)
    for name in ("peakwise", "reactive-tuned", "static-peak"):
        run = next((r for r in result.runs if r.name == name), None)
        if run is None:
            continue
        keys = [k for k in run.services if k[0] == scope]
        rate = np.sum([run.services[k].billed for k in keys], axis=0) * 60.0
        points = _bucketed(rate, size)
        ax.plot(
            _days(result, size, points.shape[0]),
            points,
            label=f"{name} $/h (spot + on-demand)",
            color=COLORS.get(name),
            lw=1.0,
            drawstyle="steps-post",
        )
    budget = result.fleet.budget(scope)
    title = f"Budget use: {scope}"
    if budget is not None and budget.limits.hourly is not None:
        ax.axhline(
            budget.limits.hourly,
            color="black",
            ls="--",
            lw=1,
            label=f"hourly limit ({budget.enforcement})",
        )
    if budget is not None and budget.limits.monthly is not None:
        monthly = budget.limits.monthly
        title += f" (monthly limit {monthly:,.0f}: {monthly / 730:,.0f}/h over a 730-hour month)"
    ax.axvline(result.warmup_minutes / 1440.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("days")
    ax.set_ylabel("USD per hour")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=4, loc="upper left")
    fig.tight_layout()
    return _figure(
        fig,
        f"budget-{scope}",
        f"Spend rate against the budget ({scope}); dotted: end of the warm-up",
    )


def _services_figure(result: FleetResult, scope: str, keys: Sequence[Key]) -> str:
    import matplotlib.pyplot as plt

    run = result.run("peakwise")
    size = max(1, result.minutes // MAX_POINTS)
    fig, axes = plt.subplots(len(keys), 1, figsize=(12, 2.8 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys, strict=True):
        s = run.services[key]
        ready = s.replicas["reserved"] + s.replicas["spot"] + s.replicas["onDemand"]
        per_replica = np.divide(s.capacity, np.maximum(ready, 1))
        stack = [
            _bucketed((s.replicas[t] * per_replica).astype(np.float64), size) for t in TIER_COLORS
        ]
        x = _days(result, size, stack[0].shape[0])
        ax.stackplot(
            x,
            *stack,
            labels=[f"capacity: {TIER_LABELS[t]}" for t in TIER_COLORS],
            colors=list(TIER_COLORS.values()),
            alpha=0.45,
            step="post",
        )
        ax.plot(x, _bucketed(s.demand, size), color="black", lw=0.7, label="demand")
        ax.plot(
            x, _bucketed(s.forecast, size), color="#c44e52", lw=0.7, alpha=0.8, label="forecast"
        )
        unit = result.services[key].unit
        ax.set_title(f"{key[0]}/{key[1]}", fontsize=10)
        ax.set_ylabel(f"{unit}/s")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8, ncol=5, loc="upper left")
    axes[-1, 0].set_xlabel("days")
    fig.tight_layout()
    return _figure(
        fig,
        f"services-{scope}",
        f"{scope}: demand, Peakwise's forecast and its ready capacity by tier "
        f"(each point the highest of {size} minutes)",
    )


def _advice_section(advice: Sequence[Advice], problems: Sequence[str]) -> str:
    import matplotlib.pyplot as plt

    parts = ['<section id="advice"><h2>Commitment advice</h2>']
    if not advice and not problems:
        parts.append("<p>No GPU type to advise on.</p>")
    for a in advice:
        best = a.best
        parts.append(f"<h3>{_esc(a.gpu_type)}</h3><p>{_esc(a.summary())}.</p>")
        rows = [
            [
                t.term + (" (best)" if t is best else ""),
                f"{t.price_per_node_hour:,.2f}",
                f"{t.nodes}",
                f"${t.monthly_cost:,.0f}",
                f"${t.saving:,.0f}",
                f"{t.break_even_on_demand:.0%}",
                f"{t.break_even_spot:.0%}" if t.break_even_spot is not None else "",
                f"{t.last_node_busy:.0%}",
            ]
            for t in a.terms
        ]
        parts.append(
            _table(
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
                rows,
            )
        )
        fig, ax = plt.subplots(figsize=(7, 3.2))
        for t in a.terms:
            ax.plot(
                [p.nodes for p in t.curve],
                [p.monthly_cost for p in t.curve],
                marker="o",
                label=f"{t.term} at {t.price_per_node_hour:,.2f}/node-h",
            )
            ax.plot([t.nodes], [t.monthly_cost], marker="*", markersize=14, color="black")
        ax.set_xlabel(f"committed {a.gpu_type} nodes")
        ax.set_ylabel("expected USD per month")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        parts.append(
            _figure(
                fig,
                f"advice-{a.gpu_type}",
                f"Expected monthly cost around the optimum ({a.gpu_type}); stars: each term's best",
            )
        )
        parts.append(
            '<ul class="assumptions">'
            + "".join(f"<li>{_esc(x)}</li>" for x in a.assumptions)
            + "</ul>"
        )
    for problem in problems:
        parts.append(f'<p class="note">No advice: {_esc(problem)}</p>')
    parts.append("</section>")
    return "\n".join(parts)


def _tokens_section(costs: Sequence[TokenCost], api_price: float | None) -> str:
    if not costs:
        return ""
    header = ["service", "tokens served", "cost", "$ per M tokens"]
    if api_price is not None:
        header.append(f"API at ${api_price:g}/M")
    rows = []
    for c in costs:
        row = [
            f"{c.key[0]}/{c.key[1]}",
            f"{c.tokens_served / 1e6:,.1f} M",
            f"${c.cost:,.0f}",
            f"{c.per_million:,.3f}" if math.isfinite(c.per_million) else "",
        ]
        if api_price is not None:
            cost = api_price * c.tokens_served / 1e6
            row.append(f"${cost:,.0f}")
        rows.append(row)
    return (
        '<section id="tokens"><h2>Cost per million tokens served</h2>'
        + _table(header, rows)
        + "</section>"
    )


def render_report(result: FleetResult, api_price: float | None = None) -> str:
    """The report as one HTML document."""
    import matplotlib

    matplotlib.use("Agg")
    start = result.start
    end = start + timedelta(minutes=result.minutes)
    title = "Peakwise fleet backtest"
    body = [
        f"<h1>{title}</h1>",
        f"<p>{len(result.services)} services in {len(result.fleet.namespaces())} namespaces on "
        f"{len(result.fleet.pools)} GPU pools, {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC "
        f"({result.minutes / 1440:.1f} days; the first {result.warmup_minutes:,} minutes are "
        "replayed, not measured). Each policy is replayed minute by minute on the same "
        "history; Peakwise forecasts each service one lead time ahead and plans the fleet "
        "jointly every minute, as the operator does.</p>",
        "<nav>"
        + "".join(f'<a href="#ns-{_esc(ns)}">{_esc(ns)}</a>' for ns in result.fleet.namespaces())
        + '<a href="#advice">advice</a></nav>',
    ]
    if result.fleet.skipped:
        body.append(
            '<p class="note">Left out: ' + "; ".join(_esc(s) for s in result.fleet.skipped) + "</p>"
        )
    body.append(f'<section id="fleet"><h2>{_esc(scope_title(result, FLEET))}</h2>')
    body.append(
        _table(SUMMARY_HEADER, _summary_rows(result, FLEET), text_columns=1, highlight="peakwise")
    )
    body.append(_cumulative_cost_figure(result, FLEET))
    body.append("</section>")
    body.append(_advice_section(result.advice, result.advice_problems))
    body.append(_tokens_section(result.token_costs(), api_price))
    for ns in result.fleet.namespaces():
        keys = [k for k in result.services if k[0] == ns]
        body.append(
            f'<section id="ns-{_esc(ns)}" class="namespace">'
            f"<h2>{_esc(scope_title(result, ns))}</h2>"
        )
        body.append(_table(SUMMARY_HEADER, _summary_rows(result, ns), highlight="peakwise"))
        body.append(_services_figure(result, ns, keys))
        body.append(_cumulative_cost_figure(result, ns))
        body.append(_budget_figure(result, ns))
        body.append("</section>")
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_report(result: FleetResult, path: str | Path, api_price: float | None = None) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(result, api_price), encoding="utf-8")
    return out

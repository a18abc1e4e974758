"""Peakwise against the baselines on every trace: the shared public traces and the synthetic
families the project generates, at one shortfall target.

    python benchmarks/all_traces.py [--target 0.5%] [--only NAME,...] [--json out.json]
                                    [--young-guard | --seed-guard]

Every trace in ../shared/traces (zero runs the demand around them makes implausible as idle
time are gaps, as `peakwise backtest` does by default) and every family of
`peakwise.trace.synthesize_family` (seed 1) is replayed with the on-demand example config,
throughput set so the peak needs 20 replicas, 10-minute lead, the deployment's
slo.shortfallMinutes set to --target. The warm-up (replayed, not measured) is a day, or a
fifth of a shorter trace. Two tiered rows replay the tiered example config (reserved, spot
and on-demand pools, 0.02 spot interruptions per node-hour, 40 replicas at the peak) on the
`weekly` family (the `hack/backtest-example` trace) and on ServeGen.

Per trace it prints the target, Peakwise's achieved shortfall and cost against the oracle,
and its cost against each baseline: the reactive policy tuned in hindsight to Peakwise's
shortfall (`reactive-tuned`; for tiered rows also the tiered reactive policy, HPA plus a
Karpenter-like provisioner on the same tiers, tuned the same way) and the HPA-like policy at
a fixed 70% utilisation target (`hpa-70%`, at its own shortfall, shown next to it). Then the
issue's targets, met or not (for a tiered row also what 20% below the tiered reactive policy
is in the oracle's terms, beside the oracle planning at 100% utilisation: about the least a
policy that is never short can cost), the mean achieved shortfall over the 14-day rows (a
calibration that is optimistic out of sample shows there first; ``--by-day`` adds each
day's shortfall), and wall and CPU time per trace.

``--young-guard`` replays, instead, young services from the same generator with other seeds
and shapes, to check a change to the young-service path is not fitted to the few young traces
above: the launch family at seeds 2-6, one day of the spikes family at seeds 1-3, and one
hour of the weekly family (its morning ramp, 08:00, and its evening peak, 20:00) at seeds
1-3, each a service with no history before it.

``--seed-guard`` does the same for the 14-day families: weekly, growth, level-shift and
spikes at seed 2, and at seeds 1 and 2 with eight gaps of 10-240 minutes each after the first
day (missing scrapes, marked as gaps; where they fall is drawn from the seed too).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np

import peakwise
from peakwise.api.inferencedeployment import SLOSpec, format_percent, parse_percent
from peakwise.backtest.config import BacktestConfig, load_config, with_replicas_at_peak
from peakwise.backtest.run import (
    BacktestOptions,
    BacktestResult,
    perfect_foresight,
    run_backtest,
    simulated_pools,
)
from peakwise.forecasting.series import Series
from peakwise.reports.tables import new_table, render
from peakwise.trace import (
    TRACE_FAMILIES,
    TraceFamily,
    demand_from_table,
    read_trace,
    synthesize_family,
)

REPO = Path(__file__).resolve().parents[1]
TRACES = REPO.parent / "shared" / "traces"
ON_DEMAND = REPO / "examples" / "backtest" / "on-demand.yaml"
TIERED = REPO / "examples" / "backtest" / "tiered.yaml"
DAY = 1440


@dataclass(frozen=True)
class Case:
    name: str
    series: Series
    config: Path
    replicas_at_peak: int
    interruptions: float = 0.0

    @property
    def tiered(self) -> bool:
        return self.config == TIERED


def cases(only: set[str] | None) -> list[Case]:
    found: list[Case] = []
    shared = sorted(TRACES.glob("*.csv"))
    if not shared:
        # Silently replaying only the synthetic families would make a before/after
        # comparison look complete.
        raise SystemExit(f"no traces in {TRACES}: the shared traces sit beside the repository")
    for path in shared:
        name = path.name.removesuffix("_per_minute.csv")
        trace = read_trace(path, implausible_zeros_as_gaps=True)
        found.append(Case(name, trace.series, ON_DEMAND, 20))
    for family in TRACE_FAMILIES:
        found.append(
            Case(family, demand_from_table(synthesize_family(family)).series, ON_DEMAND, 20)
        )
    weekly = next(c for c in found if c.name == "weekly")
    found.append(Case("weekly (tiered)", weekly.series, TIERED, 40, 0.02))
    servegen = next((c for c in found if c.name == "servegen_m-mid"), None)
    if servegen is not None:
        found.append(Case("servegen_m-mid (tiered)", servegen.series, TIERED, 40, 0.02))
    return [c for c in found if only is None or c.name in only]


def young_guard_cases() -> list[Case]:
    """Young services from the project's generator, other seeds and shapes (--young-guard)."""
    found: list[Case] = []
    for seed in range(2, 7):
        launch = demand_from_table(synthesize_family("launch", seed=seed)).series
        found.append(Case(f"launch seed {seed}", launch, ON_DEMAND, 20))
    for seed in range(1, 4):
        spikes = demand_from_table(synthesize_family("spikes", days=1, seed=seed)).series
        found.append(Case(f"spikes 1 day seed {seed}", spikes, ON_DEMAND, 20))
        day = demand_from_table(synthesize_family("weekly", days=1, seed=seed)).series
        for hour in (8, 20):
            values = day.values[hour * 60 : (hour + 1) * 60].copy()
            start = day.time_at(hour * 60)
            found.append(
                Case(
                    f"weekly 1 hour at {hour:02d}:00 seed {seed}",
                    Series(start, 60, values),
                    ON_DEMAND,
                    20,
                )
            )
    return found


GUARDED_FAMILIES: tuple[TraceFamily, ...] = ("weekly", "growth", "level-shift", "spikes")
GAPS = 8


def with_gaps(series: Series, seed: int) -> Series:
    """The series with `GAPS` runs of 10-240 missing minutes, after its first day."""
    values = series.values.copy()
    rng = np.random.default_rng(100 + seed)
    for _ in range(GAPS):
        start = int(rng.integers(DAY, len(values) - 300))
        values[start : start + int(rng.integers(10, 240))] = np.nan
    return Series(series.start, series.step_seconds, values)


def seed_guard_cases() -> list[Case]:
    """The 14-day families at another seed, and with gaps (--seed-guard)."""
    found: list[Case] = []
    for family in GUARDED_FAMILIES:
        for seed in (1, 2):
            series = demand_from_table(synthesize_family(family, seed=seed)).series
            if seed != 1:  # seed 1 without gaps is in the main table
                found.append(Case(f"{family} seed {seed}", series, ON_DEMAND, 20))
            gappy = with_gaps(series, seed)
            found.append(Case(f"{family} seed {seed} with gaps", gappy, ON_DEMAND, 20))
    return found


def with_target(config: BacktestConfig, target: float) -> BacktestConfig:
    spec = config.deployment.spec.model_copy(update={"slo": SLOSpec(shortfall_minutes=target)})
    deployment = config.deployment.model_copy(update={"spec": spec})
    return BacktestConfig(config.pools, deployment, config.budget)


def case_config(case: Case, target: float) -> BacktestConfig:
    config = with_target(load_config(case.config), target)
    return with_replicas_at_peak(config, case.series, case.replicas_at_peak)


def run(case: Case, target: float) -> tuple[BacktestResult, float, float]:
    config = case_config(case, target)
    warmup = min(DAY, len(case.series) // 5)
    options = BacktestOptions(
        warmup=timedelta(minutes=warmup), spot_interruptions_per_node_hour=case.interruptions
    )
    wall, cpu = time.perf_counter(), time.process_time()
    result = run_backtest(case.series, config, options)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="0.5%", help="slo.shortfallMinutes (default 0.5%%)")
    parser.add_argument("--only", help="comma-separated trace names")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument(
        "--by-day",
        action="store_true",
        help="also print Peakwise's shortfall on each day of every untiered 14-day row",
    )
    guards = parser.add_mutually_exclusive_group()
    guards.add_argument(
        "--young-guard",
        action="store_true",
        help="replay young services of other seeds and shapes instead (see the docstring)",
    )
    guards.add_argument(
        "--seed-guard",
        action="store_true",
        help="replay the 14-day families at another seed and with gaps instead",
    )
    args = parser.parse_args()
    target = parse_percent(args.target)
    only = set(args.only.split(",")) if args.only else None
    # An editable install elsewhere wins over this checkout unless PYTHONPATH says otherwise:
    # say whose code is measured.
    print(f"peakwise from {Path(peakwise.__file__).parent}; traces from {TRACES.resolve()}")

    table = new_table(
        (
            "trace",
            "days",
            "target",
            "achieved",
            "× oracle",
            "÷ reactive-tuned",
            "÷ tiered reactive",
            "÷ hpa-70%",
            "hpa-70% short",
            "mode at end",
            "wall s",
            "cpu s",
        )
    )
    figures: list[dict[str, object]] = []
    checks: list[str] = []
    if args.young_guard:
        chosen = young_guard_cases()
    elif args.seed_guard:
        chosen = seed_guard_cases()
    else:
        chosen = cases(only)
    days_short: list[tuple[str, list[float]]] = []
    for case in chosen:
        result, wall, cpu = run(case, target)
        if args.by_day and not case.tiered and len(case.series) / DAY >= 13.5:
            days_short.append((case.name, shortfall_by_day(result)))
        pw = result.summary("peakwise")
        tuned = result.summary("reactive-tuned")
        hpa = result.summary("hpa-70%")
        tiered = result.summary("reactive-tiered-tuned") if case.tiered else None
        days = len(case.series) / DAY
        mode = result.calibrations[-1][1].margin if result.calibrations else ""
        table.add_row(
            case.name,
            f"{days:.2g}",
            format_percent(target),
            f"{pw.under_provisioned:.2%}",
            f"{pw.cost_vs_oracle:.3f}",
            f"{pw.cost / tuned.cost:.3f}",
            f"{pw.cost / tiered.cost:.3f}" if tiered else "",
            f"{pw.cost / hpa.cost:.3f}",
            f"{hpa.under_provisioned:.2%}",
            mode,
            f"{wall:.1f}",
            f"{cpu:.1f}",
        )
        row = {
            "trace": case.name,
            "days": days,
            "target": target,
            "achieved": pw.under_provisioned,
            "cost_vs_oracle": pw.cost_vs_oracle,
            "vs_reactive_tuned": pw.cost / tuned.cost,
            "reactive_tuned_short": tuned.under_provisioned,
            "vs_tiered_reactive": pw.cost / tiered.cost if tiered else None,
            "vs_hpa": pw.cost / hpa.cost,
            "hpa_short": hpa.under_provisioned,
            "unserved": pw.unserved,
            "wall_seconds": wall,
            "cpu_seconds": cpu,
        }
        figures.append(row)
        if case.tiered:
            row["full_utilization_oracle"] = full_utilization_oracle(case, result, target)
        checks += targets_met(case, days, pw.under_provisioned, pw.cost_vs_oracle, row)
        print(f"  {case.name}: done in {wall:.1f} s", file=sys.stderr, flush=True)
    print(f"Shortfall target {format_percent(target)} of minutes; on-demand config, 20 replicas")
    print("at the peak, lead 10 min (tiered rows: tiered config, 40 replicas, 0.02 interruptions)")
    print(render(table))
    print("\n".join(checks))
    # The tiered rows replay the same traces as two of the others: counted once.
    long = [
        float(r["achieved"])  # type: ignore[arg-type]
        for r in figures
        if float(r["days"]) >= 13.5 and r["vs_tiered_reactive"] is None  # type: ignore[arg-type]
    ]
    if long:
        print(
            f"achieved shortfall over the {len(long)} untiered rows of 14 days: "
            f"mean {np.mean(long):.2%}, "
            f"{min(long):.2%} to {max(long):.2%} (target {format_percent(target)})"
        )
    if days_short:
        print_by_day(days_short)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


def shortfall_by_day(result: BacktestResult) -> list[float]:
    """Peakwise's share of short minutes on each whole day after the warm-up."""
    run = next(r for r in result.runs if r.name == "peakwise")
    out = []
    for start in range(result.warmup_minutes, len(run.demand) - DAY + 1, DAY):
        demand = run.demand[start : start + DAY]
        known = ~np.isnan(demand)
        short = demand[known] > run.capacity[start : start + DAY][known] + 1e-9
        out.append(float(short.mean()) if known.any() else float("nan"))
    return out


def print_by_day(rows: list[tuple[str, list[float]]]) -> None:
    """Each row's shortfall per measured day, and the mean of each day over the rows: where
    the calibration, set on the days before, misses its target out of sample."""
    width = max(len(days) for _, days in rows)
    table = new_table(("trace", *(f"day {k + 1}" for k in range(width))))
    for name, days in rows:
        table.add_row(name, *(f"{d:.2%}" for d in days), *([""] * (width - len(days))))
    means = [np.nanmean([d[k] for _, d in rows if k < len(d)]) for k in range(width)]
    table.add_row("mean", *(f"{m:.2%}" for m in means))
    print("Peakwise's shortfall by measured day (day 1 follows the warm-up day)")
    print(render(table))


def full_utilization_oracle(case: Case, result: BacktestResult, target: float) -> float:
    """The oracle's cost, as a share of the table's oracle, with replicas planned at 100%
    utilisation instead of the deployment's targetUtilization: the planner's cheapest mix for
    each minute's demand with no delay and no headroom at all, about the least a policy that
    is never short can cost."""
    config = case_config(case, target)
    spec = config.deployment.spec
    full = spec.model_copy(
        update={"demand": spec.demand.model_copy(update={"target_utilization": 1.0})}
    )
    pools = list(config.pools)
    namespace = config.deployment.metadata.namespace or "default"
    bound = perfect_foresight(
        namespace,
        full,
        pools,
        simulated_pools(spec, pools, 0.0),
        case.series.values,
        case.series.start,
    )
    warmup = result.warmup_minutes
    return float(bound.cost[warmup:].sum()) / result.summary("oracle").cost


def targets_met(
    case: Case, days: float, achieved: float, vs_oracle: float, row: dict[str, object]
) -> list[str]:
    """The issue's targets (at a 0.5% target) for this trace, each with its figure."""

    def line(what: str, ok: bool) -> str:
        return f"target {'met' if ok else 'MISSED'}: {case.name}: {what}"

    vs_tuned = float(row["vs_reactive_tuned"])  # type: ignore[arg-type]
    if case.tiered:
        vs_tiered = float(row["vs_tiered_reactive"])  # type: ignore[arg-type]
        # What 20% below the tiered reactive policy is in the oracle's terms, beside the
        # least any policy could cost (the oracle at 100% utilisation).
        needed = 0.8 * vs_oracle / vs_tiered
        bound = float(row["full_utilization_oracle"])  # type: ignore[arg-type]
        return [
            line(
                f"≥ 20% below the tiered reactive policy ({1 - vs_tiered:.0%}; 20% below is "
                f"{needed:.3f}× the oracle, which at 100% utilisation is {bound:.3f}×)",
                vs_tiered <= 0.8,
            )
        ]
    if days >= 13.5:
        return [
            line(f"shortfall in 0.35-0.60% ({achieved:.2%})", 0.0035 <= achieved <= 0.006),
            line(f"≤ 1.25× the oracle ({vs_oracle:.3f})", vs_oracle <= 1.25),
            line(f"≤ 0.85× reactive-tuned ({vs_tuned:.3f})", vs_tuned <= 0.85),
        ]
    if days <= 1.0:
        return [line(f"≤ reactive-tuned at the same shortfall ({vs_tuned:.3f})", vs_tuned <= 1.0)]
    return []


if __name__ == "__main__":
    sys.exit(main())

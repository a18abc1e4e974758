"""Commitment advice: how many reserved (committed) nodes of a GPU type minimise expected
monthly cost, from the fleet's demand history and its shortfall targets.

The model, per minute of history, for one GPU type:

1. **What the fleet needs.** Each service that runs on the GPU type needs the replicas its
   demand takes at its target utilisation, within its replica bounds; its shortfall target
   lets it go short in that share of minutes, so its demand is first capped at the matching
   quantile of its history (the cheapest way to meet the target with hindsight). Of those
   replicas, at most ``capacity.spot.maxFraction`` (and never the ``onDemand.minReplicas``)
   may run on spot. Summed over the services of each replica size (GPUs per replica): GPUs
   needed ``N_k(t)``, of which spot may hold ``S_k(t)``. Sizes are kept apart because the
   planner packs each size on nodes of its own (``planner.capacity.nodes_needed``): a fleet
   of 1- and 2-GPU replicas needs a node per size where one node would hold their sum.
2. **What it costs with R reserved nodes.** The ``R`` reserved nodes are paid every hour and
   cover demand first, each given to the size it saves the most on. What is left over of
   each size, ``X_k = max(0, N_k - R_k g)``, is bought as whole nodes: on-demand, or spot for
   up to ``S_k`` of it with the rest on demand, whichever costs less that minute. Spot is
   hedged as the planner hedges it: ``1 - exp(-rate × replacement time)`` of spot capacity is
   expected to be lost before a replacement is ready, so it takes ``1 / survival`` as many
   spot nodes.
3. **The optimum.** The expected monthly cost (730 hours) is convex in R: each more node
   saves the flexible capacity it displaces in the minutes it is busy, less than the node
   before it. So it is evaluated for every R from 0 to the peak and the cheapest is taken,
   for each commitment term priced; the curve around it shows how flat it is. Only the
   services' sums per size enter (``FleetNeed``, folded one service at a time), and each
   distinct (GPUs needed, spot room) of minutes is priced once, a chunk at a time, so the
   memory is a few series however large the fleet and its peak.

**Break-even utilisation** of a committed node: the share of hours it must be busy to cost
less than the flexible capacity it replaces, ``reserved price / on-demand price`` (and
against effective spot). The model sums the fleet's GPUs of a size before rounding to nodes
(replicas of several services share nodes) and leaves out how the planner shares reserved
capacity between namespaces and places each service; ``fleet.brute_force_commitment``
checks it against the real planner.

Pure: arrays and models in, numbers out; nothing is bought.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np

from peakwise.api.gpunodepool import GPUNodePool
from peakwise.api.inferencedeployment import GPUProfile, InferenceDeploymentSpec
from peakwise.forecasting.base import IntArray
from peakwise.forecasting.series import FloatArray
from peakwise.planner.capacity import MAX_SPOT_LOSS, spot_loss

HOURS_PER_MONTH = 730.0
"""A month, as cloud price lists count it (8,760 hours / 12)."""
CURVE_HALF_WIDTH = 4
"""Reserved counts shown either side of the optimum."""
RESERVED_PRICE_ANNOTATION = "peakwise.dev/reserved-price-"
"""Annotation prefix on a GPUNodePool naming a commitment term's effective $/node-hour,
e.g. ``peakwise.dev/reserved-price-1y: "30.1"``, ``peakwise.dev/reserved-price-3y``."""


class AdviceError(ValueError):
    """Commitment advice cannot be given; the message says why."""


@dataclass(frozen=True)
class TermPrice:
    term: str
    """The commitment term, e.g. 1y or 3y (or current: the reserved pool's own price)."""
    price_per_node_hour: float
    """Effective $/node-hour of a committed node over the term (upfront spread over it)."""


@dataclass(frozen=True)
class GPUTypeMarket:
    """The prices of one GPU type, the interruption rate of its spot capacity and what is
    committed now."""

    gpu_type: str
    gpus_per_node: int
    on_demand: float
    """$/node-hour on demand."""
    spot: float | None
    """$/node-hour on spot (None: no spot pool)."""
    spot_interruptions_per_node_hour: float
    spot_rate_source: str
    """Where the interruption rate comes from (a pool's observed status, or assumed)."""
    spot_replacement: timedelta
    """Time a lost spot replica takes to come back: the pool's provisioning plus a model load."""
    terms: tuple[TermPrice, ...]
    current_reserved_nodes: int = 0
    current_price: float | None = None
    """$/node-hour of the nodes committed now (None: nothing committed)."""

    @property
    def spot_survival(self) -> float:
        return 1.0 - spot_loss(self.spot_interruptions_per_node_hour, self.spot_replacement)

    @property
    def spot_effective(self) -> float | None:
        """$/node-hour of an effective spot node (None: spot is not counted on)."""
        if self.spot is None or 1.0 - self.spot_survival > MAX_SPOT_LOSS:
            return None
        return self.spot / self.spot_survival


@dataclass(frozen=True)
class ServiceNeed:
    """GPUs of one type one service needs per minute, and how many of them may be spot."""

    name: str
    gpus: FloatArray
    spot_gpus: FloatArray
    shortfall_target: float
    load_time: timedelta = timedelta(0)
    gpus_per_replica: int = 1
    """The replicas' size: the planner packs each size on nodes of its own."""


@dataclass(frozen=True)
class CurvePoint:
    nodes: int
    monthly_cost: float


@dataclass(frozen=True)
class TermAdvice:
    term: str
    price_per_node_hour: float
    nodes: int
    """Committed nodes that minimise expected monthly cost at this term's price."""
    monthly_cost: float
    """Expected monthly cost with that many committed nodes (committed + flexible)."""
    monthly_cost_without: float
    """Expected monthly cost with no commitment at all."""
    break_even_on_demand: float
    """Share of hours a committed node must be busy to beat on-demand."""
    break_even_spot: float | None
    """... to beat spot at its expected survival (None: no usable spot)."""
    last_node_busy: float
    """Share of minutes the last recommended node is busy."""
    curve: tuple[CurvePoint, ...]

    @property
    def saving(self) -> float:
        return self.monthly_cost_without - self.monthly_cost


@dataclass(frozen=True)
class Advice:
    gpu_type: str
    market: GPUTypeMarket
    terms: tuple[TermAdvice, ...]
    services: tuple[str, ...]
    minutes: int
    """Minutes of history the advice rests on."""
    peak_gpus: float
    mean_gpus: float
    monthly_cost_now: float | None
    """Expected monthly cost with what is committed now (None: nothing committed)."""
    assumptions: tuple[str, ...] = field(default=())

    @property
    def best(self) -> TermAdvice:
        return min(self.terms, key=lambda a: (a.monthly_cost, a.term))

    def summary(self) -> str:
        best = self.best
        what = (
            f"commit to {best.nodes} {self.gpu_type} node(s) for {best.term} at "
            f"{best.price_per_node_hour:,.2f}/node-h"
            if best.nodes
            else f"commit to no {self.gpu_type} nodes: flexible capacity is cheaper"
        )
        now = ""
        if self.monthly_cost_now is not None:
            now = (
                f"; now {self.market.current_reserved_nodes} node(s) committed, "
                f"{self.monthly_cost_now:,.0f}/month"
            )
        return (
            f"{what}: expected {best.monthly_cost:,.0f}/month, {best.saving:,.0f} less than no "
            f"commitment{now}; break-even utilisation {best.break_even_on_demand:.0%} against "
            f"on-demand"
        )


def best_profile(spec: InferenceDeploymentSpec, gpu_type: str, gpus_per_node: int) -> GPUProfile:
    """The profile the planner would run on this GPU type (most throughput per GPU)."""
    profiles = [
        p
        for p in spec.gpu_profiles
        if p.gpu_type == gpu_type and p.gpus_per_replica <= gpus_per_node
    ]
    if not profiles:
        raise AdviceError(f"no profile of the service runs on {gpu_type}")
    return max(
        profiles, key=lambda p: (p.throughput_per_replica / p.gpus_per_replica, -p.gpus_per_replica)
    )


def capped_demand(values: FloatArray, shortfall: float) -> FloatArray:
    """Demand capped at its (1 - shortfall) quantile: the minutes above it are the ones a
    service may go short in to meet its target with hindsight. Gaps stay gaps."""
    known = values[~np.isnan(values)]
    if known.size == 0:
        return values.copy()
    cap = float(np.quantile(known, 1.0 - shortfall, method="higher"))
    return np.minimum(values, cap)


def service_need(
    name: str, spec: InferenceDeploymentSpec, demand: FloatArray, gpu_type: str, gpus_per_node: int
) -> ServiceNeed:
    """The GPUs of `gpu_type` a service needs per minute at its shortfall target."""
    profile = best_profile(spec, gpu_type, gpus_per_node)
    capped = capped_demand(demand, spec.slo.shortfall_minutes)
    per_replica = profile.throughput_per_replica * spec.demand.target_utilization
    filled = _forward_fill(capped)
    replicas = np.ceil(np.maximum(filled, 0.0) / per_replica - 1e-9)
    replicas = np.clip(replicas, spec.replicas.min, spec.replicas.max)
    spot = np.minimum(
        np.floor(spec.capacity.spot.max_fraction * replicas),
        np.maximum(0.0, replicas - spec.capacity.on_demand.min_replicas),
    )
    gpus = replicas * profile.gpus_per_replica
    return ServiceNeed(
        name,
        gpus,
        spot * profile.gpus_per_replica,
        spec.slo.shortfall_minutes,
        spec.model_load_time,
        profile.gpus_per_replica,
    )


def _forward_fill(values: FloatArray) -> FloatArray:
    """Gaps take the last known value (0 before the first): capacity is held through them."""
    out = values.copy()
    known = ~np.isnan(out)
    if not known.any():
        return np.zeros_like(out)
    index = np.where(known, np.arange(out.shape[0]), 0)
    np.maximum.accumulate(index, out=index)
    out = out[index]
    out[: int(np.argmax(known))] = 0.0
    return out


def flexible_cost_per_minute(
    need: FloatArray, spot_room: FloatArray, reserved_gpus: FloatArray, market: GPUTypeMarket
) -> FloatArray:
    """$ per minute of the spot and on-demand nodes left to buy, for each reserved GPU count
    in `reserved_gpus` (columns) and minute (rows).

    Nodes are whole: what is left over is bought as whole on-demand nodes, or partly as whole
    spot nodes (at most the spot room, each counted at its expected survival, so more of them)
    with the rest on demand, whichever costs less that minute, as the planner would choose.
    """
    g = market.gpus_per_node
    left = np.maximum(need[:, None] - reserved_gpus[None, :], 0.0)
    od_only = np.ceil(left / g - 1e-9) * market.on_demand
    spot = market.spot_effective
    if spot is None or market.spot is None or spot >= market.on_demand:
        cost: FloatArray = od_only / 60.0
        return cost
    survival = market.spot_survival
    on_spot = np.minimum(left, spot_room[:, None])
    # The spot part rounded up (hedged at survival) with the rest on demand, or the spot part
    # rounded down to whole nodes so that no spot node is left part-empty.
    spot_nodes = np.ceil(on_spot / survival / g - 1e-9)
    split_up = spot_nodes * market.spot + np.ceil((left - on_spot) / g - 1e-9) * market.on_demand
    whole = np.floor(on_spot / g + 1e-9)
    split_down = (
        np.ceil(whole / survival - 1e-9) * market.spot
        + np.ceil((left - whole * g) / g - 1e-9) * market.on_demand
    )
    best: FloatArray = np.minimum(np.minimum(od_only, split_up), split_down) / 60.0
    return best


class FleetNeed:
    """The GPUs of one type the fleet needs per minute, and how many of them may be spot, per
    replica size: the services' needs summed as they come. The operator folds in one service
    at a time, so it never holds more than one service's history and two sums a size."""

    def __init__(self, minutes: int) -> None:
        self.minutes = minutes
        self.gpus: FloatArray = np.zeros(minutes)
        """All sizes together."""
        self.spot_gpus: FloatArray = np.zeros(minutes)
        self.by_size: dict[int, tuple[FloatArray, FloatArray]] = {}
        """GPUs per replica -> (GPUs needed, spot room) of the replicas of that size."""
        self.services: list[str] = []
        self.load_time = timedelta(0)
        """The longest model load of the services (spot replacements wait for it)."""

    @classmethod
    def of(cls, needs: Sequence[ServiceNeed]) -> FleetNeed:
        if not needs:
            raise AdviceError("no service runs on this GPU type")
        total = cls(needs[0].gpus.shape[0])
        for need in needs:
            total.add(need)
        return total

    def add(self, need: ServiceNeed) -> None:
        if need.gpus.shape[0] != self.minutes:
            raise AdviceError("the services' histories are not on one grid")
        self.gpus += need.gpus
        self.spot_gpus += need.spot_gpus
        gpus, spot = self.by_size.setdefault(
            need.gpus_per_replica, (np.zeros(self.minutes), np.zeros(self.minutes))
        )
        gpus += need.gpus
        spot += need.spot_gpus
        self.services.append(need.name)
        self.load_time = max(self.load_time, need.load_time)


Needs = Sequence[ServiceNeed] | FleetNeed
"""The services' needs one by one, or already summed."""


def _total(needs: Needs) -> FleetNeed:
    total = needs if isinstance(needs, FleetNeed) else FleetNeed.of(needs)
    if not total.services:
        raise AdviceError("no service runs on this GPU type")
    return total


CELLS_PER_CHUNK = 1 << 18
"""Minute classes x replica sizes x reserved counts evaluated at once (a few MiB per
temporary): the full matrix of 14 days of minutes by hundreds of counts is hundreds of MiB,
and several temporaries of it."""


@dataclass(frozen=True)
class _MinuteClasses:
    """The distinct (GPUs needed, spot room) of the history, a column per replica size, and
    how many minutes have each: the flexible cost depends on nothing else, and a fleet's sums
    repeat a lot."""

    gpus: FloatArray
    spot_gpus: FloatArray
    minutes: FloatArray
    total_minutes: int


def _minute_classes(total: FleetNeed) -> _MinuteClasses:
    sizes = sorted(total.by_size)  # a service at least (`_total`)
    columns = [total.by_size[k][0] for k in sizes]
    spot = [total.by_size[k][1] for k in sizes]
    rows, counts = np.unique(np.stack(columns + spot, axis=1), axis=0, return_counts=True)
    return _MinuteClasses(
        np.ascontiguousarray(rows[:, : len(sizes)]),
        np.ascontiguousarray(rows[:, len(sizes) :]),
        counts.astype(np.float64),
        total.minutes,
    )


def _flexible_by_count(
    classes: _MinuteClasses, rows: slice, market: GPUTypeMarket, counts: IntArray
) -> FloatArray:
    """$ per minute of the flexible nodes for the minute classes `rows` with each reserved
    count in `counts` (columns). With one replica size that is `flexible_cost_per_minute` at
    those counts; with several, the reserved nodes are handed out one at a time up to the
    largest count, each to the size whose flexible nodes it saves the most on (what the
    planner's exact solver finds when each further node saves no more than the one before,
    as it nearly does)."""
    g = market.gpus_per_node
    sizes = classes.gpus.shape[1]
    if sizes == 1:
        return flexible_cost_per_minute(
            classes.gpus[rows, 0], classes.spot_gpus[rows, 0], counts.astype(np.float64) * g, market
        )
    most = int(counts.max()) if counts.size else 0
    reserved = np.arange(most + 2, dtype=np.float64) * g
    cost = np.stack(
        [
            flexible_cost_per_minute(
                classes.gpus[rows, k], classes.spot_gpus[rows, k], reserved, market
            )
            for k in range(sizes)
        ],
        axis=1,
    )  # rows x sizes x counts
    n = cost.shape[0]
    given = np.zeros((n, sizes), dtype=np.int64)
    out = np.empty((n, most + 1))
    out[:, 0] = cost[:, :, 0].sum(axis=1)
    every = np.arange(n)
    for count in range(1, most + 1):
        here = np.take_along_axis(cost, given[:, :, None], axis=2)[:, :, 0]
        after = np.take_along_axis(cost, (given + 1)[:, :, None], axis=2)[:, :, 0]
        size = np.argmax(here - after, axis=1)
        out[:, count] = out[:, count - 1] - (here - after)[every, size]
        given[every, size] += 1
    picked: FloatArray = out[:, counts]
    return picked


def _monthly_costs(
    classes: _MinuteClasses, market: GPUTypeMarket, price: float, nodes: Sequence[int]
) -> FloatArray:
    counts = np.asarray(nodes, dtype=np.int64)
    sizes = classes.gpus.shape[1]
    # One size prices the counts asked; several need every count up to the largest.
    columns = counts.shape[0] if sizes == 1 else (int(counts.max()) if counts.size else 0) + 2
    step = max(1, CELLS_PER_CHUNK // (sizes * max(1, columns)))
    per_minute = np.zeros(counts.shape[0])
    for lo in range(0, classes.gpus.shape[0], step):
        rows = slice(lo, lo + step)
        flexible = _flexible_by_count(classes, rows, market, counts)
        per_minute += classes.minutes[rows] @ flexible / classes.total_minutes
    monthly: FloatArray = counts * price * HOURS_PER_MONTH + per_minute * 60.0 * HOURS_PER_MONTH
    return monthly


def monthly_costs(
    needs: Needs, market: GPUTypeMarket, price: float, nodes: Sequence[int]
) -> FloatArray:
    """Expected monthly cost with each reserved count in `nodes` at `price` per node-hour."""
    return _monthly_costs(_minute_classes(_total(needs)), market, price, nodes)


def advise(needs: Needs, market: GPUTypeMarket, assumptions: Sequence[str] = ()) -> Advice:
    """The reserved count that minimises expected monthly cost, for every term priced."""
    if not market.terms:
        raise AdviceError(f"no commitment price for {market.gpu_type}: give one per term")
    if market.on_demand <= 0:
        raise AdviceError(f"no on-demand price for {market.gpu_type}")
    total = _total(needs)
    gpus = total.gpus
    classes = _minute_classes(total)
    # Enough nodes to cover every size's peak on nodes of its own.
    peaks = classes.gpus.max(axis=0) if classes.gpus.size else np.zeros(1)
    most = int(np.ceil(peaks / market.gpus_per_node - 1e-9).sum())
    every = list(range(most + 1))
    terms = []
    for term in market.terms:
        costs = _monthly_costs(classes, market, term.price_per_node_hour, every)
        best = int(np.argmin(costs))
        lo, hi = max(0, best - CURVE_HALF_WIDTH), min(most, best + CURVE_HALF_WIDTH)
        spot = market.spot_effective
        busy = float((gpus >= best * market.gpus_per_node - 1e-9).mean()) if best else 1.0
        terms.append(
            TermAdvice(
                term=term.term,
                price_per_node_hour=term.price_per_node_hour,
                nodes=best,
                monthly_cost=float(costs[best]),
                monthly_cost_without=float(costs[0]),
                break_even_on_demand=term.price_per_node_hour / market.on_demand,
                break_even_spot=(
                    term.price_per_node_hour / spot
                    if spot is not None and spot < market.on_demand
                    else None
                ),
                last_node_busy=busy,
                curve=tuple(CurvePoint(r, float(costs[r])) for r in range(lo, hi + 1)),
            )
        )
    now = None
    if market.current_reserved_nodes and market.current_price is not None:
        now = float(
            _monthly_costs(classes, market, market.current_price, [market.current_reserved_nodes])[
                0
            ]
        )
    return Advice(
        gpu_type=market.gpu_type,
        market=market,
        terms=tuple(terms),
        services=tuple(total.services),
        minutes=int(gpus.shape[0]),
        peak_gpus=float(gpus.max()) if gpus.size else 0.0,
        mean_gpus=float(gpus.mean()) if gpus.size else 0.0,
        monthly_cost_now=now,
        assumptions=tuple(assumptions),
    )


def term_prices(
    pools: Sequence[GPUNodePool], overrides: Mapping[str, float]
) -> tuple[TermPrice, ...]:
    """Commitment prices of a GPU type: `overrides` (term -> $/node-hour, e.g. from the
    command line) over the pools' ``peakwise.dev/reserved-price-<term>`` annotations; with
    neither, the reserved pool's own price as the term ``current``."""
    found: dict[str, float] = {}
    for pool in pools:
        for key, value in pool.metadata.annotations.items():
            if key.startswith(RESERVED_PRICE_ANNOTATION):
                term = key[len(RESERVED_PRICE_ANNOTATION) :]
                try:
                    price = float(value)
                except ValueError:
                    raise AdviceError(
                        f"GPUNodePool {pool.metadata.name}: {key} must be a price, not {value!r}"
                    ) from None
                if not (price > 0 and math.isfinite(price)):
                    raise AdviceError(f"GPUNodePool {pool.metadata.name}: {key} must be positive")
                found[term] = price
    found.update(overrides)
    if not found:
        reserved = [p for p in pools if p.spec.capacity_type == "reserved"]
        if reserved:
            found["current"] = min(p.spec.price_per_node_hour for p in reserved)
    return tuple(TermPrice(t, p) for t, p in sorted(found.items()))


def market_for(
    gpu_type: str,
    pools: Sequence[GPUNodePool],
    terms: Mapping[str, float] | None = None,
    *,
    assumed_spot_interruptions: float = 0.0,
    load_time: timedelta = timedelta(0),
    on_demand_price: float | None = None,
    spot_price: float | None = None,
) -> GPUTypeMarket:
    """The market of a GPU type from its pools: cheapest on-demand and spot prices, the spot
    pool's observed interruption rate (its status) or the assumed one, what is committed."""
    same = [p for p in pools if p.spec.gpu_type == gpu_type]
    if not same:
        raise AdviceError(f"no GPUNodePool offers {gpu_type}")
    gpus_per_node = max(p.spec.gpus_per_node for p in same)
    on_demand = [p for p in same if p.spec.capacity_type == "onDemand"]
    spot_pools = [p for p in same if p.spec.capacity_type == "spot"]
    reserved = [p for p in same if p.spec.capacity_type == "reserved"]
    od = on_demand_price
    if od is None:
        if not on_demand:
            raise AdviceError(
                f"no onDemand pool of {gpu_type}: give the on-demand price to compare against"
            )
        od = min(p.spec.price_per_node_hour for p in on_demand)
    spot = spot_price
    rate, source, replacement = assumed_spot_interruptions, "assumed", timedelta(0)
    if spot_pools:
        cheapest = min(spot_pools, key=lambda p: p.spec.price_per_node_hour)
        spot = spot if spot is not None else cheapest.spec.price_per_node_hour
        replacement = cheapest.spec.provisioning_time
        if cheapest.status is not None:
            rate = cheapest.status.interruption_rate
            source = f"observed on {cheapest.metadata.name}"
    committed = sum(p.spec.reserved_nodes for p in reserved)
    return GPUTypeMarket(
        gpu_type=gpu_type,
        gpus_per_node=gpus_per_node,
        on_demand=od,
        spot=spot,
        spot_interruptions_per_node_hour=rate,
        spot_rate_source=source,
        spot_replacement=replacement + load_time,
        terms=term_prices(same, terms or {}),
        current_reserved_nodes=committed,
        current_price=min((p.spec.price_per_node_hour for p in reserved), default=None),
    )


def describe_assumptions(advice_market: GPUTypeMarket, needs: Needs, minutes: int) -> list[str]:
    """The assumptions an advice rests on, in words (for status and the report)."""
    spot = advice_market.spot_effective
    services = len(needs.services) if isinstance(needs, FleetNeed) else len(needs)
    lines = [
        f"history: {minutes:,} minutes ({minutes / 1440:.1f} days) of {services} service(s)' "
        "demand, each capped at its shortfall target",
        f"on-demand {advice_market.on_demand:,.2f}/node-h"
        + (
            f"; spot {advice_market.spot:,.2f}/node-h at "
            f"{advice_market.spot_interruptions_per_node_hour:g} interruptions/node-h "
            f"({advice_market.spot_rate_source}), {spot:,.2f}/node-h at its expected survival"
            if advice_market.spot is not None and spot is not None
            else "; no usable spot"
        ),
        "terms: "
        + ", ".join(f"{t.term} {t.price_per_node_hour:,.2f}/node-h" for t in advice_market.terms),
        f"a month is {HOURS_PER_MONTH:g} hours; demand is taken to repeat the history",
    ]
    return lines

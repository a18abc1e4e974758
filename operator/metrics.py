"""Prometheus metrics the operator exports on /metrics.

Names follow Prometheus conventions: counters end in `_total`, durations in `_seconds`.
docs/operator.md lists them (a test checks that every name it lists is exported).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

REGISTRY = CollectorRegistry()
# process_resident_memory_bytes, process_cpu_seconds_total, open file descriptors, ...
ProcessCollector(registry=REGISTRY)
_DEPLOYMENT = ("namespace", "name")

demand_forecast = Gauge(
    "peakwise_demand_forecast", "Forecast demand peak (units/s)", _DEPLOYMENT, registry=REGISTRY
)
demand_actual = Gauge(
    "peakwise_demand_actual", "Latest observed demand (units/s)", _DEPLOYMENT, registry=REGISTRY
)
replicas = Gauge(
    "peakwise_replicas",
    "Ready replicas per pool and tier",
    (*_DEPLOYMENT, "pool", "tier"),
    registry=REGISTRY,
)
desired_replicas = Gauge(
    "peakwise_desired_replicas",
    "Planned replicas per pool and tier",
    (*_DEPLOYMENT, "pool", "tier"),
    registry=REGISTRY,
)
service_desired_replicas = Gauge(
    "peakwise_service_desired_replicas",
    "Planned replicas of the service over all pools (stable: for KEDA and HPA to follow)",
    _DEPLOYMENT,
    registry=REGISTRY,
)
cost_hourly = Gauge(
    "peakwise_cost_hourly", "Planned spend rate per namespace", ("namespace",), registry=REGISTRY
)
budget_spend = Gauge(
    "peakwise_budget_spend", "Spend this period per namespace", ("namespace",), registry=REGISTRY
)
budget_limit_hourly = Gauge(
    "peakwise_budget_limit_hourly", "Hourly cap in force", ("namespace",), registry=REGISTRY
)
budget_headroom_hourly = Gauge(
    "peakwise_budget_headroom_hourly",
    "Hourly spend still allowed",
    ("namespace",),
    registry=REGISTRY,
)
forecast_loss = Gauge(
    "peakwise_forecast_loss", "Backtest pinball loss of the model", _DEPLOYMENT, registry=REGISTRY
)
forecast_coverage = Gauge(
    "peakwise_forecast_coverage",
    "Backtest coverage of the quantile",
    _DEPLOYMENT,
    registry=REGISTRY,
)
shortfall_target = Gauge(
    "peakwise_shortfall_target",
    "The service's shortfall target: share of minutes that may be short (slo.shortfallMinutes)",
    _DEPLOYMENT,
    registry=REGISTRY,
)
shortfall_achieved = Gauge(
    "peakwise_shortfall_achieved",
    "Share of the last 7 days' minutes the plan the service was given was short of demand",
    _DEPLOYMENT,
    registry=REGISTRY,
)
round_seconds = Histogram(
    "peakwise_planning_round_seconds",
    "Time to forecast and plan every deployment",
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120),
    registry=REGISTRY,
)
reconcile_errors = Counter(
    "peakwise_reconcile_errors_total", "Reconcile errors by kind", ("kind",), registry=REGISTRY
)
forecast_reactive = Gauge(
    "peakwise_forecast_reactive",
    "1 when the service is sized reactively (no model yet, or its backtest is poor)",
    _DEPLOYMENT,
    registry=REGISTRY,
)
model_age = Gauge(
    "peakwise_model_age_seconds",
    "Age of the model that forecast the service (refits are due every few hours)",
    _DEPLOYMENT,
    registry=REGISTRY,
)
fits_pending = Gauge(
    "peakwise_model_fits_pending", "Model fits queued or running", registry=REGISTRY
)
model_fits = Counter("peakwise_model_fits_total", "Forecasting models fitted", registry=REGISTRY)
child_writes = Counter(
    "peakwise_child_writes_total",
    "Writes to child Deployments (apply, delete) per InferenceDeployment",
    ("namespace", "name", "verb"),
    registry=REGISTRY,
)
full_round_seconds = Histogram(
    "peakwise_full_round_seconds",
    "Time from a planning round's start until every deployment's children and status follow it",
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
    registry=REGISTRY,
)
last_round_timestamp = Gauge(
    "peakwise_last_round_timestamp_seconds",
    "When the latest planning round finished (Unix time): the operator's liveness signal",
    registry=REGISTRY,
)
status_writes = Counter(
    "peakwise_status_writes_total",
    "Status patches written, by kind (a steady round writes none)",
    ("kind",),
    registry=REGISTRY,
)
status_heartbeat_writes = Counter(
    "peakwise_status_heartbeat_writes_total",
    "Of those, patches only the heartbeat was due for (no decision changed), by kind",
    ("kind",),
    registry=REGISTRY,
)
provider_requests = Counter(
    "peakwise_provider_requests_total",
    "Requests to node-pool backends, by provider and outcome (ok or the HTTP status)",
    ("provider", "outcome"),
    registry=REGISTRY,
)
objects_left_out = Gauge(
    "peakwise_objects_left_out",
    "Objects the latest round could not plan (invalid or unplannable), by kind",
    ("kind",),
    registry=REGISTRY,
)

PER_DEPLOYMENT = (
    model_age,
    shortfall_target,
    shortfall_achieved,
    demand_forecast,
    demand_actual,
    replicas,
    desired_replicas,
    service_desired_replicas,
    forecast_loss,
    forecast_coverage,
    forecast_reactive,
    child_writes,
)
"""Metrics with a series per InferenceDeployment (labels start with namespace, name)."""


def forget_deployment(namespace: str, name: str) -> None:
    """Drop every series of a deleted InferenceDeployment, so /metrics does not keep it."""
    for metric in PER_DEPLOYMENT:
        # prometheus_client has no "remove by label prefix": list the label sets it holds.
        for labels in list(metric._metrics):
            if labels[:2] == (namespace, name):
                metric.remove(*labels)

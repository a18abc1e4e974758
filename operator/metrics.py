"""Prometheus metrics the operator exports on /metrics."""

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
round_seconds = Histogram(
    "peakwise_planning_round_seconds",
    "Time to forecast and plan every deployment",
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120),
    registry=REGISTRY,
)
reconcile_errors = Counter(
    "peakwise_reconcile_errors", "Reconcile errors by kind", ("kind",), registry=REGISTRY
)
forecast_reactive = Gauge(
    "peakwise_forecast_reactive",
    "1 when the service is sized reactively (no model yet, or its backtest is poor)",
    _DEPLOYMENT,
    registry=REGISTRY,
)
fits_pending = Gauge(
    "peakwise_model_fits_pending", "Model fits queued or running", registry=REGISTRY
)
model_fits = Counter("peakwise_model_fits", "Forecasting models fitted", registry=REGISTRY)
child_writes = Counter(
    "peakwise_child_writes",
    "Writes to child Deployments (apply, delete) per InferenceDeployment",
    ("namespace", "name", "verb"),
    registry=REGISTRY,
)

"""What a backtest replays against: the pools, the deployment and its budget, from YAML.

The config file is the same multi-document YAML a platform and an application team would
`kubectl apply`: GPUNodePools, one InferenceDeployment (or several, picking one by name) and
optionally the namespace's CostBudget. Anything else in the file is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from pydantic import ValidationError

from peakwise.api.costbudget import CostBudget
from peakwise.api.errors import describe
from peakwise.api.gpunodepool import GPUNodePool
from peakwise.api.inferencedeployment import InferenceDeployment
from peakwise.forecasting.series import Series


class ConfigError(ValueError):
    """A backtest config that cannot be used; the message is fit to show a user as is."""


@dataclass(frozen=True)
class BacktestConfig:
    pools: tuple[GPUNodePool, ...]
    deployment: InferenceDeployment
    budget: CostBudget | None


def parse_config(
    text: str, source: str = "<config>", deployment: str | None = None
) -> BacktestConfig:
    try:
        documents = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    pools: list[GPUNodePool] = []
    deployments: list[InferenceDeployment] = []
    budgets: list[CostBudget] = []
    for doc in documents:
        if not isinstance(doc, dict):
            raise ConfigError(f"{source}: every document must be a mapping with a kind")
        kind = doc.get("kind")
        name = (doc.get("metadata") or {}).get("name", "?")
        try:
            if kind == "GPUNodePool":
                pools.append(GPUNodePool.model_validate(doc))
            elif kind == "InferenceDeployment":
                deployments.append(InferenceDeployment.model_validate(doc))
            elif kind == "CostBudget":
                budgets.append(CostBudget.model_validate(doc))
        except ValidationError as e:
            raise ConfigError(f"{source}: {kind} {name}: {describe(e)}") from None
    if not pools:
        raise ConfigError(f"{source}: no GPUNodePool; a backtest needs the pools to place on")
    if deployment is not None:
        deployments = [d for d in deployments if d.metadata.name == deployment]
        if not deployments:
            raise ConfigError(f"{source}: no InferenceDeployment named {deployment!r}")
    if len(deployments) != 1:
        names = ", ".join(d.metadata.name for d in deployments) or "none"
        raise ConfigError(
            f"{source}: need exactly one InferenceDeployment (found {names}); pick one with "
            "--deployment"
        )
    chosen = deployments[0]
    namespace = chosen.metadata.namespace or "default"
    budget = next((b for b in budgets if (b.metadata.namespace or "default") == namespace), None)
    gpu_types = {p.gpu_type for p in chosen.spec.gpu_profiles}
    if not any(p.spec.gpu_type in gpu_types for p in pools):
        raise ConfigError(
            f"{source}: no pool offers the deployment's GPU types ({', '.join(sorted(gpu_types))})"
        )
    return BacktestConfig(pools=tuple(pools), deployment=chosen, budget=budget)


def load_config(path: str | Path, deployment: str | None = None) -> BacktestConfig:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    return parse_config(text, str(path), deployment)


def with_replicas_at_peak(config: BacktestConfig, series: Series, replicas: int) -> BacktestConfig:
    """Scale every profile's throughput so the series' peak needs `replicas` replicas."""
    spec = config.deployment.spec
    peak = float(np.nanmax(series.values)) if len(series) else 0.0
    if not peak > 0:
        raise ConfigError("the trace has no positive demand to scale to")
    best = max(p.throughput_per_replica for p in spec.gpu_profiles)
    factor = peak / (replicas * spec.demand.target_utilization) / best
    profiles = [
        p.model_copy(update={"throughput_per_replica": p.throughput_per_replica * factor})
        for p in spec.gpu_profiles
    ]
    new_spec = spec.model_copy(update={"gpu_profiles": profiles})
    deployment = config.deployment.model_copy(update={"spec": new_spec})
    return BacktestConfig(pools=config.pools, deployment=deployment, budget=config.budget)

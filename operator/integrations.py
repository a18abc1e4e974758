"""What a round reads besides the watch-fed indexes: targetRef workloads and their
autoscalers (Kubernetes), live node prices and Prometheus' retention (Prometheus).

Each reader is its own error scope and never raises into the round: a target that cannot
be read is reported in its own status, a price that cannot be read falls back to the spec,
an unknown retention is no warning.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, Protocol

from peakwise.api.inferencedeployment import InferenceDeployment, TargetRef
from peakwise.operator.prices import InstantQuery
from peakwise.operator.scale_target import TargetObservation, autoscalers_of, observe_workload

log = logging.getLogger(__name__)
Key = tuple[str, str]


class WorkloadAPI(Protocol):
    """The part of the Kubernetes adapter (`kube.KubeAdapter`) targets need."""

    def read_workload(self, namespace: str, kind: str, name: str) -> dict[str, Any] | None: ...

    def list_autoscalers(
        self, namespace: str
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]: ...


def read_targets(
    api: WorkloadAPI, deployments: Mapping[Key, InferenceDeployment]
) -> dict[Key, TargetObservation]:
    """Every targetRef's workload and the autoscalers scaling it (one list per namespace)."""
    autoscalers: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]] | str] = {}
    out: dict[Key, TargetObservation] = {}
    for key, infd in deployments.items():
        ref: TargetRef | None = infd.spec.target_ref
        if ref is None:
            continue
        namespace = key[0]
        try:
            body = api.read_workload(namespace, ref.kind, ref.name)
        except Exception as error:  # a 403 or an outage is this object's problem only
            out[key] = TargetObservation(ref.kind, ref.name, False, str(error))
            continue
        if body is None:
            out[key] = TargetObservation(
                ref.kind,
                ref.name,
                False,
                f"{ref.kind} {namespace}/{ref.name} ({ref.api_version}) not found",
            )
            continue
        observed = observe_workload(ref, body)
        if namespace not in autoscalers:
            try:
                autoscalers[namespace] = api.list_autoscalers(namespace)
            except Exception as error:
                autoscalers[namespace] = f"autoscalers could not be listed: {error}"
        listed = autoscalers[namespace]
        if isinstance(listed, str):
            observed = _with(observed, autoscaler_problem=listed)
        else:
            observed = _with(observed, scaled_by=tuple(autoscalers_of(ref, *listed)))
        out[key] = observed
    return out


def _with(observed: TargetObservation, **changes: Any) -> TargetObservation:
    return replace(observed, **changes)


class RetentionSource(Protocol):
    def retention(self) -> timedelta | None:
        """How long the server keeps samples; None when it does not say."""
        ...


@dataclass
class CachedRetention:
    """Prometheus' retention, asked at most every `every` (it changes only on a restart)."""

    source: RetentionSource
    every: float = 600.0
    _value: timedelta | None = None
    _asked: float = -math.inf
    clock: Callable[[], float] = field(default=time.monotonic)

    def __call__(self) -> timedelta | None:
        if self.clock() - self._asked >= self.every:
            self._asked = self.clock()
            try:
                self._value = self.source.retention()
            except Exception as error:  # unknown retention: no warning, asked again later
                log.info("Prometheus retention unknown: %s", error)
                self._value = None
        return self._value


@dataclass
class RoundEdges:
    """The readers a round uses; any may be absent (tests, Recommend-only setups)."""

    workloads: WorkloadAPI | None = None
    prices: InstantQuery | None = None
    retention: Callable[[], timedelta | None] | None = None

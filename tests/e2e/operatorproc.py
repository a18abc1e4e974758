"""`peakwise operator run` as a process of the tests, the way it runs in a cluster.

``OperatorProcess(cluster, log, kubeconfig, namespaces)``: ``start()``, ``kill()`` (SIGKILL),
``stop()``; ``metrics()`` reads its /metrics; ``full_rounds()`` and ``wait_rounds(n)`` count
rounds every deployment has followed; ``child_writes(name, namespace)``.
The chart's RBAC for a set of namespaces: ``chart_rbac(cluster, release, namespace, watched)``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from e2e.clusterfix import LocalCluster
from e2e.polling import wait_for
from e2e.promstack import free_port

REPO = Path(__file__).resolve().parents[2]
RBAC_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def chart_rbac(
    cluster: LocalCluster, release: str, namespace: str, watched: Sequence[str]
) -> list[dict[str, Any]]:
    """The RBAC objects the chart renders for an operator watching `watched`."""
    rendered = cluster.helm(
        *("template", release, str(REPO / "charts" / "peakwise"), "--namespace", namespace),
        *("--set", f"watchNamespaces={{{','.join(watched)}}}"),
        *("--set", "providers.kwok.enabled=true", "--set", "userRoles.create=false"),
    ).stdout
    return [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in RBAC_KINDS]


class OperatorProcess:
    def __init__(
        self,
        cluster: LocalCluster,
        log: Path,
        kubeconfig: str,
        namespaces: Sequence[str],
        interval: float = 3.0,
        prometheus_url: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.cluster = cluster
        self.log = log
        self.kubeconfig = kubeconfig
        self.namespaces = list(namespaces)
        self.interval = interval
        self.prometheus_url = prometheus_url or cluster.prometheus_url
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.rbac: list[dict[str, Any]] = []
        """The chart's RBAC objects the operator runs with."""

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": self.kubeconfig}
        out = self.log.open("ab")
        self.metrics_port, self.liveness_port = free_port(), free_port()
        namespaces = [a for ns in self.namespaces for a in ("--namespace", ns)]
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "peakwise", "operator", "run", *namespaces),
                *("--interval", f"{self.interval:g}s", "--prometheus-url", self.prometheus_url),
                *("--metrics-port", str(self.metrics_port)),
                *("--liveness-port", str(self.liveness_port), "--listen-address", "127.0.0.1"),
                *self.extra_args,
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def metrics(self) -> str:
        return get(f"http://127.0.0.1:{self.metrics_port}/metrics")

    def metric(self, name: str) -> float:
        """The sum of every series of `name` (a full name, e.g. with `_total` or `_count`)."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def full_rounds(self) -> float:
        """Rounds whose plan every deployment has followed (children and status) so far."""
        return self.metric("peakwise_full_round_seconds_count")

    def wait_rounds(self, rounds: int = 2) -> None:
        """Wait until `rounds` more full rounds have gone by (exceptions: not listening yet)."""
        start = wait_for("the operator's metrics", lambda: (self.full_rounds(),))[0]
        wait_for(
            f"{rounds} more rounds",
            lambda: self.full_rounds() >= start + rounds,
            timeout=rounds * self.interval * 4 + 30,
        )

    def child_writes(self, name: str, namespace: str) -> float:
        """Child Deployment writes (applies and deletes) for one InferenceDeployment so far."""
        total = 0.0
        for line in self.metrics().splitlines():
            if (
                line.startswith("peakwise_child_writes_total{")
                and f'name="{name}"' in line
                and f'namespace="{namespace}"' in line
            ):
                total += float(line.rsplit(" ", 1)[1])
        return total

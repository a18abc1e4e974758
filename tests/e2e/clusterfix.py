"""The local cluster as a test fixture: ``hack/cluster up``/``down`` in a state dir.

``LocalCluster(state_dir).up()`` runs ``hack/cluster up`` with ``PEAKWISE_CLUSTER_DIR`` set
(every port free and chosen at start), then reads the ``cluster.env`` it wrote.
Attributes: ``kubeconfig`` (path), ``state_dir``, ``bin_dir`` (kubectl, helm, kwok of the
pinned versions), ``api_url``, ``prometheus_url``, ``prometheus`` (a ``PrometheusAPI``).
Helpers: ``kubectl(*args)``, ``kubectl_json(*args)``, ``helm(*args)``, ``api_client()``,
``service_account_kubeconfig(ns, name)``, ``add_gpu_pool(pool, n)``, ``backfill_trace(csv)``
(through ``hack/cluster prometheus backfill``).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import kwok_nodes
from .promstack import PrometheusAPI
from .trace_backfill import BackfillResult

REPO_ROOT = Path(__file__).resolve().parents[2]
HACK_CLUSTER = REPO_ROOT / "hack" / "cluster"


class ClusterError(RuntimeError):
    pass


def _read_env(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key] = value
    return values


class LocalCluster:
    def __init__(self, state_dir: str | os.PathLike[str], up_timeout: float = 600) -> None:
        self.state_dir = Path(state_dir)
        self.up_timeout = up_timeout
        self.env: dict[str, str] = {}
        self._api_client: Any = None

    # --- lifecycle -------------------------------------------------------------------------

    def _run_hack(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PEAKWISE_CLUSTER_DIR": str(self.state_dir)}
        try:
            return subprocess.run(
                [str(HACK_CLUSTER), *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(
                f"hack/cluster {' '.join(args)} did not finish within {timeout}s; "
                f"logs in {self.state_dir / 'logs'}"
            ) from exc

    def up(self) -> None:
        proc = self._run_hack("up", timeout=self.up_timeout)
        (self.state_dir / "up.out").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            self.down()
            raise ClusterError(
                f"hack/cluster up failed ({proc.returncode}); logs in {self.state_dir}/logs*\n"
                f"{proc.stderr[-6000:]}"
            )
        self.env = _read_env(self.state_dir / "cluster.env")

    def down(self) -> None:
        proc = self._run_hack("down", timeout=120)
        (self.state_dir / "down.out").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise ClusterError(f"hack/cluster down failed: {proc.stderr}")

    def status(self) -> subprocess.CompletedProcess[str]:
        return self._run_hack("status", timeout=60)

    # --- where things are ------------------------------------------------------------------

    @property
    def kubeconfig(self) -> str:
        return self.env["KUBECONFIG_PATH"]

    @property
    def bin_dir(self) -> Path:
        return Path(self.env["BIN"])

    @property
    def api_url(self) -> str:
        return f"https://127.0.0.1:{self.env['API_PORT']}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.env['PROM_PORT']}"

    @property
    def prometheus(self) -> PrometheusAPI:
        return PrometheusAPI(self.prometheus_url)

    @property
    def kubernetes_version(self) -> str:
        return self.env["KUBERNETES_VERSION"]

    # --- clients ---------------------------------------------------------------------------

    def tool_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KUBECONFIG": self.kubeconfig,
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def _tool(
        self, tool: str, args: Sequence[str], stdin: str | None, check: bool, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.bin_dir / tool), *args],
            input=stdin,
            env=self.tool_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise ClusterError(
                f"{tool} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )
        return proc

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return self._tool("kubectl", args, stdin, check, timeout)

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def helm(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return self._tool("helm", args, stdin, check, timeout)

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for the admin user (cached)."""
        if self._api_client is None:
            from kubernetes import config

            self._api_client = config.new_client_from_config(config_file=self.kubeconfig)
        return self._api_client

    def service_account_kubeconfig(
        self, namespace: str, name: str, path: str | os.PathLike[str] | None = None
    ) -> str:
        """A kubeconfig that acts as ServiceAccount ``namespace/name`` (a bound token from
        the TokenRequest API), to run e.g. the operator with only the RBAC it declares."""
        token = self.kubectl(
            "create", "token", name, "-n", namespace, "--duration=24h"
        ).stdout.strip()
        target = Path(path) if path else self.state_dir / f"sa-{namespace}-{name}.kubeconfig"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "peakwise-local",
                    "cluster": {
                        "server": self.api_url,
                        "certificate-authority": str(self.state_dir / "pki" / "ca.crt"),
                    },
                }
            ],
            "users": [{"name": f"{namespace}-{name}", "user": {"token": token}}],
            "contexts": [
                {
                    "name": "sa",
                    "context": {
                        "cluster": "peakwise-local",
                        "user": f"{namespace}-{name}",
                        "namespace": namespace,
                    },
                }
            ],
            "current-context": "sa",
        }
        target.write_text(json.dumps(config, indent=2))
        target.chmod(0o600)
        return str(target)

    # --- simulated GPU nodes and Prometheus history ---------------------------------------

    def add_gpu_pool(self, pool: kwok_nodes.GPUPool, count: int) -> list[str]:
        return kwok_nodes.create_nodes(self.api_client(), pool, count)

    def backfill_trace(self, trace: str | os.PathLike[str], *labels: str) -> BackfillResult:
        """Backfill into the cluster's Prometheus (restarts it); labels as ``k=v``."""
        args = ["prometheus", "backfill", str(trace)]
        for label in labels:
            args += ["--label", label]
        proc = self._run_hack(*args, timeout=300)
        if proc.returncode != 0:
            raise ClusterError(f"backfill failed: {proc.stderr}")
        data = json.loads(proc.stdout.strip().splitlines()[-1])
        data["metrics"] = tuple(data["metrics"])
        return BackfillResult(**data)

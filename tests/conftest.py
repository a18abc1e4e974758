"""Session fixtures for the end-to-end tests: a real Prometheus and the local cluster.

* ``prometheus``: a ``PrometheusServer`` (tests/e2e/promstack.py) on a free loopback port.
  Attributes: ``url``, ``remote_write_url``, ``data_dir``, ``log_file``; methods
  ``backfill_trace(csv, labels=..., end=...)``, ``push(series)``, ``query(promql)``,
  ``query_range(promql, start, end, step)``.
* ``cluster``: the whole local cluster started by ``hack/cluster up`` in a temporary state
  dir (etcd, kube-apiserver, controller-manager, scheduler, kwok, Prometheus), see
  ``tests/e2e/clusterfix.py``. Attributes: ``kubeconfig``, ``state_dir``, ``prometheus_url``,
  ``bin_dir``; methods ``kubectl(*args)``, ``api_client()``.

Both fail loudly (never skip) when a binary is missing: hack/setup installs everything.
Logs stay in the pytest temporary folder; their location is printed when a test failed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e.clusterfix import LocalCluster
from e2e.promstack import PrometheusServer

_LOG_DIRS: list[tuple[str, Path]] = []


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    root = tmp_path_factory.mktemp("prometheus")
    _LOG_DIRS.append(("prometheus", root))
    server = PrometheusServer(root)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    state = tmp_path_factory.mktemp("cluster")
    _LOG_DIRS.append(("cluster", state))
    local = LocalCluster(state)
    local.up()
    try:
        yield local
    finally:
        local.down()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    failed = terminalreporter.stats.get("failed") or terminalreporter.stats.get("error")
    if failed and _LOG_DIRS:
        terminalreporter.section("end-to-end logs")
        for name, path in _LOG_DIRS:
            terminalreporter.write_line(f"{name}: {path} (logs in *.log / logs/)")

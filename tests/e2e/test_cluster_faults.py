"""hack/cluster on bad input and faults: clear messages and a way out, never a hang."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from e2e.clusterfix import HACK_CLUSTER, LocalCluster

pytestmark = pytest.mark.e2e


def run(
    state: Path, *args: str, timeout: float = 120, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HACK_CLUSTER), *args],
        env={**os.environ, "PEAKWISE_CLUSTER_DIR": str(state), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_fixed_port_taken(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = run(tmp_path / "c", "up", PEAKWISE_APISERVER_PORT=str(port))
    assert proc.returncode != 0
    assert f"port 127.0.0.1:{port} (PEAKWISE_APISERVER_PORT) is already taken" in proc.stderr
    assert "unset PEAKWISE_APISERVER_PORT" in proc.stderr
    assert not (tmp_path / "c" / "run").exists() or not any((tmp_path / "c" / "run").iterdir())


def test_foreign_state_dir_untouched(tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    proc = run(tmp_path, "up")
    assert proc.returncode != 0
    assert "was not made by hack/cluster" in proc.stderr
    assert precious.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]


def test_missing_binaries(tmp_path: Path) -> None:
    proc = run(tmp_path / "c", "up", PEAKWISE_CACHE=str(tmp_path / "empty-cache"))
    assert proc.returncode != 0
    assert "hack/cluster build" in proc.stderr


def test_status_and_down_without_cluster(tmp_path: Path) -> None:
    status = run(tmp_path / "none", "status")
    assert status.returncode == 3
    assert "no cluster" in status.stdout
    down = run(tmp_path / "none", "down")
    assert down.returncode == 0
    assert "no cluster was running" in down.stderr


@pytest.mark.slow
def test_half_dead_cluster(tmp_path: Path) -> None:
    """A component died: status says so, up refuses, down cleans up, up works again."""
    local = LocalCluster(tmp_path / "c")
    local.up()
    try:
        pid = int((tmp_path / "c" / "run" / "kube-scheduler.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status = local.status()
            if status.returncode == 1:
                break
            time.sleep(0.2)
        assert status.returncode == 1, status.stdout
        assert "partly running" in status.stdout
        again = run(tmp_path / "c", "up")
        assert again.returncode != 0
        assert "already runs" in again.stderr
    finally:
        local.down()
    assert local.status().returncode == 3
    pids = [
        int(p.read_text()) for p in (tmp_path / "c" / "run").glob("*.pid") if p.read_text().strip()
    ]
    assert pids == []
    # After down, a new up in the same dir starts fresh (old data and pid files removed).
    local.up()
    try:
        assert local.status().returncode == 0
        assert (tmp_path / "c" / "logs.previous").is_dir()
    finally:
        local.down()

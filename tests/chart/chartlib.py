"""Helpers for the chart tests: the pinned helm binary, rendering, and manifest lookups.

helm is the one `hack/cluster build` caches (hack/cluster.d/versions.sh pins it); its
folder is asked from the same shell functions, so the tests and the scripts agree.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "peakwise"
FULL_VALUES = Path(__file__).resolve().parent / "values-full.yaml"

Manifest = dict[str, Any]


@functools.cache
def bin_dir() -> Path:
    proc = subprocess.run(
        [
            "bash",
            "-c",
            "source hack/lib.sh && source hack/cluster.d/build.sh && cluster_bin_dir",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return Path(proc.stdout.strip())


def helm_path() -> Path:
    helm = bin_dir() / "helm"
    assert helm.exists(), f"{helm} missing: run hack/setup (it builds the cluster's binaries)"
    return helm


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(helm_path()), *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check:
        assert proc.returncode == 0, f"helm {' '.join(args)}:\n{proc.stdout}{proc.stderr}"
    return proc


def template(*values_files: Path, sets: Iterable[str] = (), release: str = "pw") -> list[Manifest]:
    args = ["template", release, str(CHART), "--namespace", "peakwise-system"]
    for path in values_files:
        args += ["--values", str(path)]
    for item in sets:
        args += ["--set", item]
    out = helm(*args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def named(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    (found,) = [m for m in of_kind(manifests, kind) if m["metadata"]["name"] == name]
    return found

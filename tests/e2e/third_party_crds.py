"""Third-party CRDs (Cluster API, Karpenter, LeaderWorkerSet) read from their published Go modules.

The modules, versions and CRD files are pinned once, in ``hack/cluster.d/crd-modules.txt``
(``hack/cluster build`` downloads the same modules ahead of time). This helper does not need
that build: for each module it runs ``go mod download -json MODULE@VERSION`` in a throw-away
module (a temporary directory with its own go.mod, ``GOFLAGS=-mod=mod``,
``GOTOOLCHAIN=local``). With the module already in the Go module cache this costs
milliseconds and no network; otherwise Go fetches it from the module proxy (``GOPROXY``)
once and the cache keeps it for every later run.

The CRD is read from the extracted module directory when Go reports one, else straight from
the module's zip in the download cache: Karpenter's go.mod asks for a newer Go than the local
toolchain, and ``go mod download`` then reports an error and no ``Dir`` although the zip is
downloaded and verified. Anything else (no Go, no network, unknown version, missing file)
raises ``CRDModuleError`` with what to do. Nothing is copied into the repository.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PINS = Path(__file__).resolve().parents[2] / "hack" / "cluster.d" / "crd-modules.txt"
CLUSTER_API = "sigs.k8s.io/cluster-api"
KARPENTER = "sigs.k8s.io/karpenter"
LWS = "sigs.k8s.io/lws"
MACHINE_DEPLOYMENTS = "cluster.x-k8s.io_machinedeployments.yaml"
NODEPOOLS = "karpenter.sh_nodepools.yaml"
LEADER_WORKER_SETS = "leaderworkerset.x-k8s.io_leaderworkersets.yaml"

_GO_TIMEOUT = 600.0


class CRDModuleError(RuntimeError):
    """A Go module or a CRD file inside it could not be had; the message says why."""


@dataclass(frozen=True)
class Module:
    path: str
    version: str
    dir: Path | None
    """The extracted module, when Go reported one."""
    zip: Path | None
    """The module zip in the download cache."""

    def read(self, name: str) -> str | None:
        """The text of ``name`` (a path inside the module), or None if the module lacks it."""
        if self.dir is not None and (self.dir / name).is_file():
            return (self.dir / name).read_text()
        if self.zip is not None and self.zip.is_file():
            with zipfile.ZipFile(self.zip) as archive:
                member = f"{self.path}@{self.version}/{name}"
                try:
                    return archive.read(member).decode()
                except KeyError:
                    return None
        return None


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise CRDModuleError(
            "the Go toolchain is needed to fetch third-party CRDs from their Go modules "
            "(go is not on PATH; hack/setup expects Go 1.26+)"
        )
    return go


def download(module: str, version: str) -> Module:
    """``go mod download -json module@version`` in a throw-away module; cached by Go."""
    go = _go()
    with tempfile.TemporaryDirectory(prefix="peakwise-crdmod-") as tmp:
        Path(tmp, "go.mod").write_text("module peakwise.dev/crdfetch\n\ngo 1.22\n")
        env = {**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
        try:
            proc = subprocess.run(
                [go, "mod", "download", "-json", f"{module}@{version}"],
                cwd=tmp,
                env=env,
                capture_output=True,
                text=True,
                timeout=_GO_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise CRDModuleError(
                f"go mod download {module}@{version} took over {_GO_TIMEOUT:.0f}s "
                f"(GOPROXY={os.environ.get('GOPROXY', 'default')}); is the module proxy reachable?"
            ) from error
    try:
        info: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        info = {}
    found = Module(
        module,
        version,
        Path(info["Dir"]) if info.get("Dir") else None,
        Path(info["Zip"]) if info.get("Zip") else None,
    )
    usable = (found.dir is not None and found.dir.is_dir()) or (
        found.zip is not None and found.zip.is_file()
    )
    if not usable:
        raise CRDModuleError(
            f"go mod download {module}@{version} failed (exit {proc.returncode}): "
            f"{info.get('Error') or proc.stderr.strip() or proc.stdout.strip()}; "
            "the Go module proxy must be reachable the first time (GOPROXY, GOFLAGS=-mod=mod)"
        )
    return found


def pinned_modules() -> dict[str, tuple[str, list[str]]]:
    """``{module: (version, [CRD paths inside the module])}`` from crd-modules.txt."""
    pins: dict[str, tuple[str, list[str]]] = {}
    for line in PINS.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        module, version, *paths = line.split()
        pins[module] = (version, paths)
    return pins


def crd_texts(module: str) -> dict[str, str]:
    """``{path: YAML}`` of every pinned CRD file of ``module`` (e.g. sigs.k8s.io/karpenter)."""
    version, paths = pinned_modules()[module]
    found = download(module, version)
    texts = {}
    for path in paths:
        text = found.read(path)
        if text is None:
            raise CRDModuleError(
                f"{path} is not in {module}@{version} (dir {found.dir}, zip {found.zip}): "
                "did the CRD move in this release? Fix hack/cluster.d/crd-modules.txt"
            )
        texts[path] = text
    return texts


def crd(module: str, file_name: str) -> dict[str, Any]:
    """The pinned CRD of ``module`` whose file is called ``file_name``, as a dict."""
    texts = {p: t for p, t in crd_texts(module).items() if Path(p).name == file_name}
    if len(texts) != 1:
        raise CRDModuleError(f"expected one pinned {file_name} for {module}: {sorted(texts)}")
    ((path, text),) = texts.items()
    docs = [d for d in yaml.safe_load_all(text) if d]
    crds = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
    if len(crds) != 1:
        raise CRDModuleError(f"expected one CRD in {module} {path}: {len(crds)}")
    return dict(crds[0])


def machine_deployment_crd() -> dict[str, Any]:
    return crd(CLUSTER_API, MACHINE_DEPLOYMENTS)


def nodepool_crd() -> dict[str, Any]:
    return crd(KARPENTER, NODEPOOLS)


def leader_worker_set_crd() -> dict[str, Any]:
    return crd(LWS, LEADER_WORKER_SETS)


def served_versions(definition: dict[str, Any]) -> list[str]:
    return [v["name"] for v in definition["spec"]["versions"] if v.get("served")]


def storage_version(definition: dict[str, Any]) -> str:
    return next(v["name"] for v in definition["spec"]["versions"] if v.get("storage"))

"""CRDs published inside other projects' Go modules (Cluster API, Karpenter).

The providers drive these kinds, so they are tested against the real schemas without
copying them into the repository: ``hack/cluster build`` downloads the modules pinned in
``hack/cluster.d/crd-modules.txt`` into the Go module cache, and ``crd_files()`` finds the
files there (``go env GOMODCACHE``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PINS = REPO_ROOT / "hack" / "cluster.d" / "crd-modules.txt"


def pinned_modules() -> dict[str, tuple[str, list[str]]]:
    """``{module: (version, [crd paths inside the module])}`` from crd-modules.txt."""
    pins: dict[str, tuple[str, list[str]]] = {}
    for line in PINS.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        module, version, *paths = line.split()
        pins[module] = (version, paths)
    return pins


def _escape(module: str) -> str:
    # The module cache spells capital letters as "!" + lower case.
    return "".join(f"!{c.lower()}" if c.isupper() else c for c in module)


def module_dir(module: str, version: str) -> Path:
    gomodcache = subprocess.run(
        ["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    path = Path(gomodcache) / f"{_escape(module)}@{version}"
    if not path.is_dir():
        raise FileNotFoundError(
            f"{module}@{version} is not in the Go module cache ({path}); run hack/setup "
            "(hack/cluster build downloads the modules of hack/cluster.d/crd-modules.txt)"
        )
    return path


def crd_files(module: str) -> list[Path]:
    """The pinned CRD files of ``module`` (e.g. ``sigs.k8s.io/karpenter``)."""
    version, paths = pinned_modules()[module]
    root = module_dir(module, version)
    files = [root / p for p in paths]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"CRD files missing in {module}@{version}: {missing}")
    return files

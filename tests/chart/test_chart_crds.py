"""The peakwise-crds chart: the generated CRDs as templates, so `helm upgrade` upgrades them.

Rendered with the pinned helm, no cluster: tests/chart/test_chart_lifecycle.py installs,
upgrades and uninstalls it for real.
"""

from __future__ import annotations

from typing import Any

import yaml

from chart.chartlib import REPO_ROOT, helm
from peakwise.api.crdgen import crd_files

CRD_CHART = REPO_ROOT / "charts" / "peakwise-crds"


def _render(*sets: str) -> dict[str, dict[str, Any]]:
    args = ["template", "peakwise-crds", str(CRD_CHART)]
    for item in sets:
        args += ["--set", item]
    docs = [d for d in yaml.safe_load_all(helm(*args).stdout) if d]
    return {d["metadata"]["name"]: d for d in docs}


def test_files_are_generated_from_the_models() -> None:
    """Regenerate with `peakwise crds --out charts/peakwise-crds/files`."""
    committed = {p.name: p.read_text() for p in (CRD_CHART / "files").glob("*.yaml")}
    assert committed == crd_files(), "run `peakwise crds --out charts/peakwise-crds/files`"


def test_templates_render_the_generated_crds_unchanged_but_for_labels() -> None:
    rendered = _render()
    generated = {
        (doc := yaml.safe_load(text))["metadata"]["name"]: doc for text in crd_files().values()
    }
    assert set(rendered) == set(generated)
    for name, doc in rendered.items():
        meta = doc["metadata"]
        assert meta.pop("annotations") == {"helm.sh/resource-policy": "keep"}, name
        labels = meta.pop("labels")
        assert labels["app.kubernetes.io/part-of"] == "peakwise"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert doc == generated[name], f"{name}: the template changed the CRD"


def test_keep_false_drops_the_resource_policy() -> None:
    for name, doc in _render("keep=false").items():
        assert "annotations" not in doc["metadata"], name


def test_chart_versions_move_together() -> None:
    """Both charts ship CRDs of the same models: one version for both."""
    crds = yaml.safe_load((CRD_CHART / "Chart.yaml").read_text())
    main = yaml.safe_load((REPO_ROOT / "charts" / "peakwise" / "Chart.yaml").read_text())
    assert (crds["version"], crds["appVersion"]) == (main["version"], main["appVersion"])


def test_unknown_value_is_rejected() -> None:
    proc = helm("template", "x", str(CRD_CHART), "--set", "kep=false", check=False)
    assert proc.returncode != 0
    assert "kep" in proc.stderr

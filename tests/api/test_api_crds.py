"""The committed CRDs: generated from the models, described, structural, consistent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from peakwise.api.common import DURATION_PATTERN
from peakwise.api.crdgen import KINDS, check_crds, crd_files

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = REPO_ROOT / "crds"

Schema = dict[str, Any]


def _committed() -> dict[str, Schema]:
    return {path.name: yaml.safe_load(path.read_text()) for path in sorted(CRD_DIR.glob("*.yaml"))}


def _schema(crd: Schema) -> Schema:
    (version,) = crd["spec"]["versions"]
    root: Schema = version["schema"]["openAPIV3Schema"]
    return root


def _nodes(node: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Every schema node under ``node`` with a readable path (``spec.gpuProfiles[].gpuType``)."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), dict):
        yield from _nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}{{}}")


def _properties(node: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    for node_path, child in _nodes(node, path):
        if node_path and not node_path.endswith(("[]", "{}")):
            yield node_path, child


CRDS = _committed()
CRD_IDS = sorted(CRDS)


def test_committed_crds_match_the_models() -> None:
    assert check_crds(CRD_DIR) == []
    assert sorted(crd_files()) == CRD_IDS, "no stale or extra CRD files in crds/"


@pytest.mark.parametrize("name", CRD_IDS)
def test_every_property_is_described(name: str) -> None:
    undescribed = [
        path
        for path, node in _properties(_schema(CRDS[name]))
        # metadata is the API server's: a CRD may not describe it (it rejects the CRD).
        if path != "metadata" and not str(node.get("description", "")).strip()
    ]
    assert undescribed == [], f"kubectl explain would show nothing for {undescribed}"


@pytest.mark.parametrize("name", CRD_IDS)
def test_schemas_are_structural(name: str) -> None:
    problems = []
    for path, node in _nodes(_schema(CRDS[name])):
        where = path or "<root>"
        for key in ("$ref", "$defs", "definitions", "anyOf", "oneOf", "allOf", "not", "title"):
            if key in node:
                problems.append(f"{where}: has {key}")
        if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            problems.append(f"{where}: no type")
        if node.get("additionalProperties") is False:
            problems.append(f"{where}: additionalProperties: false (pruning already drops them)")
        if "additionalProperties" in node and "properties" in node:
            problems.append(f"{where}: both properties and additionalProperties")
        if node.get("nullable") is not None and "default" in node:
            problems.append(f"{where}: nullable with a default")
        for required in node.get("required", []):
            if required not in node.get("properties", {}):
                problems.append(f"{where}: requires unknown property {required}")
        if node.get("type") == "object" and not (
            "properties" in node
            or "additionalProperties" in node
            or node.get("x-kubernetes-preserve-unknown-fields")
            or path == "metadata"
        ):
            problems.append(f"{where}: an object without properties would be pruned empty")
    assert problems == []


@pytest.mark.parametrize("name", CRD_IDS)
def test_cel_messages_name_a_field_of_their_object(name: str) -> None:
    for path, node in _nodes(_schema(CRDS[name])):
        for validation in node.get("x-kubernetes-validations", []):
            # A rule on an object names one of its fields; a rule on a scalar (a duration's
            # range) names the scalar itself.
            fields = set(node.get("properties", {})) or {path.rsplit(".", 1)[-1]}
            assert any(field in validation["message"] for field in fields), (path, validation)
            assert validation["rule"].strip()


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_subresources_and_printer_columns(kind: Any) -> None:
    crd = CRDS[f"peakwise.dev_{kind.plural}.yaml"]
    (version,) = crd["spec"]["versions"]
    assert version["subresources"]["status"] == {}
    schema = _schema(crd)
    known = {path for path, _ in _properties(schema)}
    for column in version["additionalPrinterColumns"]:
        path = column["jsonPath"].lstrip(".")
        if path != "metadata.creationTimestamp":
            assert path in known, f"printer column {column['name']} reads unknown {path}"
    assert version["additionalPrinterColumns"][-1]["name"] == "Age"


def test_scale_subresource_drives_the_manual_floor() -> None:
    crd = CRDS["peakwise.dev_inferencedeployments.yaml"]
    (version,) = crd["spec"]["versions"]
    scale = version["subresources"]["scale"]
    assert scale["specReplicasPath"] == ".spec.replicas.floor"
    known = {path for path, _ in _properties(_schema(crd))}
    for key in ("specReplicasPath", "statusReplicasPath", "labelSelectorPath"):
        assert scale[key].lstrip(".") in known
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Mode", "Replicas", "Peak", "$/h", "Budget", "Age"} <= columns


# Patterns that bound a string's length by themselves.
LENGTH_BOUNDING_PATTERNS = {"^[A-Z]{3}$"}


@pytest.mark.parametrize("name", CRD_IDS)
def test_every_size_a_spec_accepts_is_bounded(name: str) -> None:
    """What a tenant (or a typo) writes cannot be arbitrarily large: no value the API server
    accepts can overflow the planner or cost more than its share of a round."""
    unbounded = []
    for path, node in _nodes(_schema(CRDS[name])["properties"]["spec"], "spec"):
        kind = node.get("type")
        if kind == "string" and "maxLength" not in node and "enum" not in node:
            if node.get("pattern") not in LENGTH_BOUNDING_PATTERNS:
                unbounded.append(f"{path}: string without maxLength")
        elif kind in ("number", "integer") and "maximum" not in node:
            unbounded.append(f"{path}: number without maximum")
        elif kind == "array" and "maxItems" not in node:
            unbounded.append(f"{path}: list without maxItems")
        elif kind == "object" and "additionalProperties" in node and "maxProperties" not in node:
            unbounded.append(f"{path}: map without maxProperties")
    assert unbounded == []


@pytest.mark.parametrize("name", CRD_IDS)
def test_every_duration_has_a_range_the_api_server_checks(name: str) -> None:
    for path, node in _nodes(_schema(CRDS[name])["properties"]["spec"], "spec"):
        if node.get("pattern") == DURATION_PATTERN:
            rules = node.get("x-kubernetes-validations", [])
            assert any("findAll" in r["rule"] for r in rules), f"{path}: duration without a range"

"""Generate the CustomResourceDefinitions from the pydantic models, the API's single source.

pydantic emits JSON Schema (2020-12 flavoured, with $refs); Kubernetes wants a *structural*
OpenAPI v3.0 schema: everything inlined, no titles, nullable instead of anyOf-with-null,
boolean exclusive bounds. This module does that translation and adds what only CRDs have:
subresources, printer columns, scope and names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema

from peakwise.api.common import GROUP, VERSION, format_duration
from peakwise.api.costbudget import CostBudgetSpec, CostBudgetStatus
from peakwise.api.gpunodepool import GPUNodePoolSpec, GPUNodePoolStatus
from peakwise.api.inferencedeployment import InferenceDeploymentSpec, InferenceDeploymentStatus

JSON = dict[str, Any]


class _WireSchema(GenerateJsonSchema):
    """Defaults written the way users write them (durations as 10m, not ISO 8601)."""

    def encode_default(self, dft: Any) -> Any:
        if isinstance(dft, timedelta):
            return format_duration(dft)
        return super().encode_default(dft)


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    short_names: list[str]
    scope: str
    spec: type[BaseModel]
    status: type[BaseModel]
    description: str
    columns: list[JSON]
    scale: JSON | None = None
    categories: list[str] = field(default_factory=lambda: ["peakwise"])


def _column(name: str, type_: str, path: str, description: str, priority: int = 0) -> JSON:
    column: JSON = {"name": name, "type": type_, "jsonPath": path, "description": description}
    if priority:
        column["priority"] = priority
    return column


_AGE = _column("Age", "date", ".metadata.creationTimestamp", "Time since creation")

KINDS: list[Kind] = [
    Kind(
        kind="InferenceDeployment",
        plural="inferencedeployments",
        short_names=["infd"],
        scope="Namespaced",
        spec=InferenceDeploymentSpec,
        status=InferenceDeploymentStatus,
        description="A GenAI model server whose replicas and GPU capacity Peakwise sizes "
        "ahead of forecast demand peaks, within the namespace's CostBudget.",
        columns=[
            _column("Mode", "string", ".spec.mode", "Recommend or Enforce"),
            _column("Replicas", "integer", ".status.replicas", "Ready replicas"),
            _column("Desired", "integer", ".status.desiredReplicas", "Planned replicas"),
            _column("Tiers", "string", ".status.tiers", "Planned replicas by capacity tier"),
            _column("Peak", "number", ".status.forecast.peak", "Forecast demand peak (units/s)"),
            _column("$/h", "number", ".status.cost.hourly", "Spend rate of the plan"),
            _column("Budget", "string", ".status.budgetState", "Namespace budget effect"),
            _AGE,
        ],
        scale={
            "specReplicasPath": ".spec.replicas.floor",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    ),
    Kind(
        kind="GPUNodePool",
        plural="gpunodepools",
        short_names=["gpupool"],
        scope="Cluster",
        spec=GPUNodePoolSpec,
        status=GPUNodePoolStatus,
        description="A cluster-wide pool of identical GPU nodes of one capacity tier "
        "(reserved, spot or on-demand) that Peakwise scales for inference services.",
        columns=[
            _column("GPU", "string", ".spec.gpuType", "GPU type"),
            _column("Capacity", "string", ".spec.capacityType", "Capacity tier"),
            _column("Nodes", "integer", ".status.nodes", "Nodes that exist"),
            _column("Ready", "integer", ".status.readyNodes", "Ready nodes"),
            _column("Desired", "integer", ".status.desiredNodes", "Nodes the plan wants"),
            _column("$/node-h", "number", ".spec.pricePerNodeHour", "Price per node-hour"),
            _AGE,
        ],
    ),
    Kind(
        kind="CostBudget",
        plural="costbudgets",
        short_names=["budget"],
        scope="Namespaced",
        spec=CostBudgetSpec,
        status=CostBudgetStatus,
        description="The spending cap on GPU capacity for the namespace it lives in.",
        columns=[
            _column("Enforcement", "string", ".spec.enforcement", "Hard or Soft"),
            _column("Hourly", "number", ".spec.limits.hourly", "Hourly limit"),
            _column("Monthly", "number", ".spec.limits.monthly", "Monthly limit"),
            _column("Spend", "number", ".status.spend", "Spend this period"),
            _column("Projected", "number", ".status.projectedSpend", "Projected period spend"),
            _column("State", "string", ".status.state", "Within, Warning or Exceeded"),
            _AGE,
        ],
    ),
]

_DROPPED_KEYS = {"title", "additionalProperties", "$defs"}


def _resolve(schema: JSON, defs: JSON) -> JSON:
    """Inline a $ref and drop the null branch of an Optional, keeping sibling keys."""
    node = dict(schema)
    if "$ref" in node:
        target = _resolve(defs[node.pop("$ref").split("/")[-1]], defs)
        # Keys beside the $ref (description, default) describe this use of the type.
        node = {**target, **node}
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express a union of {len(options)} types in a CRD: {schema}")
        node = {**_resolve(options[0], defs), **node}
    return node


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


_FIRST_KEYS = ("type", "description")


def structural(schema: JSON, defs: JSON) -> JSON:
    """Translate one pydantic JSON Schema node into a structural OpenAPI v3.0 node."""
    node = _resolve(schema, defs)
    out: JSON = {k: node[k] for k in _FIRST_KEYS if k in node}
    if "description" in out:
        out["description"] = " ".join(out["description"].split())
    for key, value in node.items():
        if key in _DROPPED_KEYS or key in _FIRST_KEYS:
            continue
        if key == "default":
            if value is not None:
                out[key] = _without_nulls(value)
        elif key == "properties":
            out[key] = {name: structural(prop, defs) for name, prop in value.items()}
        elif key == "items":
            out[key] = structural(value, defs)
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = value
    # A map (dict[str, X]) keeps its value schema under additionalProperties.
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        out["additionalProperties"] = structural(extra, defs)
    return out


def model_schema(model: type[BaseModel]) -> JSON:
    raw = model.model_json_schema(by_alias=True, mode="validation", schema_generator=_WireSchema)
    return structural(raw, raw.get("$defs", {}))


def _status_schema(model: type[BaseModel]) -> JSON:
    # Status is written by the operator with every field present or omitted, never null.
    raw = model.model_json_schema(by_alias=True, mode="serialization", schema_generator=_WireSchema)
    out = structural(raw, raw.get("$defs", {}))
    out.pop("required", None)
    return out


def crd(kind: Kind) -> JSON:
    """The CustomResourceDefinition of one kind."""
    subresources: JSON = {"status": {}}
    if kind.scale:
        subresources["scale"] = kind.scale
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{kind.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.kind.lower(),
                "shortNames": kind.short_names,
                "categories": kind.categories,
            },
            "scope": kind.scope,
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": kind.description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {
                                    "type": "string",
                                    "description": "Versioned schema of this object.",
                                },
                                "kind": {
                                    "type": "string",
                                    "description": "REST resource this object represents.",
                                },
                                # The API server allows nothing else here: metadata is its own.
                                "metadata": {"type": "object"},
                                "spec": model_schema(kind.spec),
                                "status": _status_schema(kind.status),
                            },
                        }
                    },
                    "subresources": subresources,
                    "additionalPrinterColumns": kind.columns,
                }
            ],
        },
    }


def render(kind: Kind) -> str:
    header = "# Generated by `peakwise crds` from the models in peakwise/api/. Do not edit.\n"
    return header + yaml.safe_dump(crd(kind), sort_keys=False, width=100, allow_unicode=True)


def crd_files() -> dict[str, str]:
    """File name to content, for every CRD."""
    return {f"{GROUP}_{kind.plural}.yaml": render(kind) for kind in KINDS}


def write_crds(out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in crd_files().items():
        path = out / name
        path.write_text(content)
        written.append(path)
    return written


def check_crds(out_dir: str | Path) -> list[str]:
    """Human-readable differences between the committed CRDs and the models (empty: none)."""
    problems = []
    for name, content in crd_files().items():
        path = Path(out_dir) / name
        if not path.exists():
            problems.append(f"{path}: missing; run `peakwise crds --out {out_dir}`")
        elif path.read_text() != content:
            problems.append(f"{path}: differs from the models; run `peakwise crds --out {out_dir}`")
    return problems

"""Every field a user can set is read by the code: a spec field nothing reads is a promise
the operator does not keep (it is removed instead, as `forecast.horizon` was).

Read means an attribute access `.<field>` somewhere outside the API models (the operator,
the planner, the forecasters, the backtest, the CLI). Names are matched, not types: a field
is only reported when no code anywhere reads an attribute of that name.
"""

from __future__ import annotations

import ast
import typing
from pathlib import Path

from pydantic import BaseModel

from peakwise.api.costbudget import CostBudgetSpec
from peakwise.api.gpunodepool import GPUNodePoolSpec
from peakwise.api.inferencedeployment import InferenceDeploymentSpec

REPO = Path(__file__).resolve().parents[1]
CODE = [REPO / "operator", REPO / "forecasting", *(REPO / "peakwise").iterdir()]
API = REPO / "peakwise" / "api"


def _models(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every model reachable from `root` through its fields' annotations, by name."""
    found: dict[str, type[BaseModel]] = {}
    todo: list[object] = [root]
    while todo:
        tp = todo.pop()
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if tp.__name__ in found:
                continue
            found[tp.__name__] = tp
            todo.extend(f.annotation for f in tp.model_fields.values())
        else:
            todo.extend(typing.get_args(tp))
    return found


def _attributes_read() -> set[str]:
    names: set[str] = set()
    for place in CODE:
        files = [place] if place.suffix == ".py" else sorted(place.rglob("*.py"))
        for path in files:
            if path.resolve().is_relative_to(API.resolve()) or path.suffix != ".py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Attribute):
                    names.add(node.attr)
    return names


def test_every_spec_field_is_read_by_the_code() -> None:
    read = _attributes_read()
    unread, checked = [], 0
    for root in (InferenceDeploymentSpec, GPUNodePoolSpec, CostBudgetSpec):
        for name, model in sorted(_models(root).items()):
            for field, info in model.model_fields.items():
                checked += 1
                if field not in read:
                    unread.append(f"{name}.{field} ({info.alias or field})")
    assert checked > 50, "the walk over the spec models found too few fields"
    assert not unread, "spec fields nothing reads: " + ", ".join(unread)

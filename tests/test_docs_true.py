"""The docs stay true: every metric they name is exported, every operator flag they list
exists."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from peakwise.cli import build_parser
from peakwise.operator.metrics import REGISTRY

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [
    *sorted((REPO / "docs").glob("*.md")),
    REPO / "README.md",
    *sorted((REPO / "charts").rglob("*.md")),
    *sorted((REPO / "charts").rglob("*.json")),
    *sorted((REPO / "charts").rglob("*.yaml")),
    *sorted((REPO / "examples").rglob("*.yaml")),
]
TRACE_SERIES = "peakwise_trace_"
"""Series the local cluster's backfill writes (docs/local-cluster.md), not operator metrics."""


def _exported() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_count", "_sum"),
        }.get(family.type, ())
        names.update(family.name + s for s in suffixes)
    return names


def test_every_metric_the_docs_name_is_exported() -> None:
    exported = _exported()
    missing = {}
    for path in DOCUMENTS:
        for name in set(re.findall(r"\bpeakwise_[a-z0-9_]+", path.read_text())):
            if not name.startswith(TRACE_SERIES) and name not in exported:
                missing.setdefault(name, []).append(str(path.relative_to(REPO)))
    assert missing == {}, f"named in the docs but not exported: {missing}"


def _operator_run_flags() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    operator = sub.choices["operator"]
    ops = next(a for a in operator._actions if isinstance(a, argparse._SubParsersAction))
    return {flag for action in ops.choices["run"]._actions for flag in action.option_strings}


def test_every_operator_flag_the_docs_list_exists() -> None:
    table = (REPO / "docs" / "operator.md").read_text()
    listed = set(re.findall(r"^\| `(--[a-z-]+)", table, flags=re.MULTILINE))
    listed |= set(re.findall(r"`(--[a-z-]+)[ `]", table))
    assert "--interval" in listed and "--status-heartbeat" in listed  # the table was read
    assert listed - _operator_run_flags() == set()

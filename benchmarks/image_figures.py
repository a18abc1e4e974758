"""The operator image's figures: build times, size and layers, container start to first round.

    python benchmarks/image_figures.py            # warm figures; builds the base if missing
    python benchmarks/image_figures.py --cold     # also a cold build: the base is removed and
                                                  # bootstrapped again, no layer cache

What it measures (wall time and the CPU time of the processes it waits for; the machine is
shared, so wall times are upper bounds):

1. ``hack/image base``: the Debian-bootstrapped Python base (mmdebstrap), only when it is
   missing (always with ``--cold``);
2. cold build (``--cold``): ``hack/image build --no-cache`` on that base;
3. warm build, nothing changed: every step from buildah's layer cache;
4. warm build after a code change: the build context copied to a temporary folder with one
   line added to ``peakwise/__init__.py``, so only the steps from the first COPY of code on
   run again (the dependency layer is reused);
5. size (uncompressed) and layer count;
6. on a local cluster of its own, with the chart installed and the examples applied
   (tests/image/imagelib.py, the same setup as tests/image): from starting the container
   (``hack/image run``) to its process running, to ``/healthz`` answering, to the first round
   that gave every example InferenceDeployment a plan in its status, and to a model fitted
   for every one; plus the container's CPU time (its cgroup) at that point.
"""

from __future__ import annotations

import argparse
import fnmatch
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from e2e.clusterfix import LocalCluster  # noqa: E402
from image.imagelib import (  # noqa: E402
    HACK_IMAGE,
    BuiltImage,
    build_image,
    deploy_with_examples,
    example_documents,
    tag_for_checkout,
)

TAG = tag_for_checkout().replace(":test-", ":bench-")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(what: str, run: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.monotonic(), _children_cpu()
    result = run()
    wall, cpu = time.monotonic() - wall, _children_cpu() - cpu
    print(f"{what:<44} {wall:7.1f} s wall {cpu:7.1f} s CPU", flush=True)
    return result, wall, cpu


def _hack_image(*args: str) -> str:
    return subprocess.run(
        [str(HACK_IMAGE), *args], capture_output=True, text=True, check=True, timeout=3600
    ).stdout.strip()


def _base_name() -> str:
    # The base's name is its recipe's hash; `hack/image base` prints it (building if missing).
    return _hack_image("base")


def _base_present() -> bool:
    out = subprocess.run(
        ["buildah", "images", "--noheading", "--format", "{{.Name}}:{{.Tag}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return any(line.startswith("localhost/peakwise-python-base:") for line in out.splitlines())


def _context_copy(target: Path) -> Path:
    """The build context as .dockerignore admits it, plus the Dockerfile."""
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    admitted = [p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")]
    for name in [*admitted, "Dockerfile"]:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(
                source,
                target / name,
                symlinks=True,
                ignore=lambda _d, names: [
                    n for n in names if n == "__pycache__" or fnmatch.fnmatch(n, "*.pyc")
                ],
            )
        else:
            shutil.copy2(source, target / name)
    return target


def _cgroup_cpu_seconds(name: str) -> float | None:
    for path in (
        Path(f"/sys/fs/cgroup/cpuacct/{name}/cpuacct.usage"),
        Path(f"/sys/fs/cgroup/cpu,cpuacct/{name}/cpuacct.usage"),
    ):
        if path.exists():
            return int(path.read_text()) / 1e9
    stat = Path(f"/sys/fs/cgroup/{name}/cpu.stat")
    if stat.exists():
        fields = dict(line.split() for line in stat.read_text().splitlines())
        return int(fields["usage_usec"]) / 1e6
    return None


def _until(check: Callable[[], bool], timeout: float = 600) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise TimeoutError("gave up waiting")
        time.sleep(0.2)
    return time.monotonic()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _planned(cluster: LocalCluster, expected: int) -> bool:
    items = cluster.kubectl_json("get", "inferencedeployments", "-A")["items"]
    return sum(1 for i in items if (i.get("status") or {}).get("desiredReplicas")) >= expected


def _fitted(metrics_url: str, expected: int) -> bool:
    try:
        with urllib.request.urlopen(metrics_url, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return False
    fits = [line for line in text.splitlines() if line.startswith("peakwise_model_fits_total")]
    return bool(fits) and float(fits[0].split()[-1]) >= expected


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold", action="store_true", help="also a cold build (slow)")
    parser.add_argument("--no-run", action="store_true", help="build figures only")
    args = parser.parse_args()

    print(f"image {TAG}; buildah {_hack_version('buildah')}, runc {_hack_version('runc')}")
    if args.cold:
        if _base_present():
            subprocess.run(["buildah", "rmi", "--force", _base_name()], check=True)
        _timed("base: mmdebstrap + import (cold)", _base_name)
        built, _, _ = _timed("build, cold (--no-cache)", lambda: build_image(TAG, "--no-cache"))
    elif not _base_present():
        _timed("base: mmdebstrap + import (was missing)", _base_name)
        built = build_image(TAG)
    else:
        built = build_image(TAG)
    built, _, _ = _timed("build, warm (nothing changed)", lambda: build_image(TAG))
    with tempfile.TemporaryDirectory(prefix="peakwise-image-ctx-") as tmp:
        context = _context_copy(Path(tmp))
        init = context / "peakwise" / "__init__.py"
        init.write_text(init.read_text() + f"# benchmark {time.time()}\n")
        _timed(
            "build, warm (one code file changed)",
            lambda: build_image(TAG + "-changed", "--context", str(context)),
        )
    subprocess.run(["buildah", "rmi", TAG + "-changed"], capture_output=True, check=False)
    print(f"{'size':<44} {built.size}")
    print(f"{'layers':<44} {built.layers}")
    if not args.no_run:
        _container_figures(built)
    return 0


def _hack_version(tool: str) -> str:
    out = subprocess.run([tool, "--version"], capture_output=True, text=True, check=False)
    words = out.stdout.split()
    return words[2] if len(words) > 2 else "?"


def _container_figures(built: BuiltImage) -> None:
    expected = sum(1 for d in example_documents("x") if d["kind"] == "InferenceDeployment")
    with tempfile.TemporaryDirectory(prefix="peakwise-image-bench-") as tmp:
        work = Path(tmp)
        (work / "cluster").mkdir()
        cluster = LocalCluster(work / "cluster")
        cluster.up()
        deployed = None
        try:
            started = time.monotonic()
            deployed = deploy_with_examples(cluster, built, work)
            # deploy_with_examples returns once runc reports the container running.
            begin = deployed.operator.started_at
            running = time.monotonic()
            healthy = _until(lambda: _answers(deployed.healthz_url))
            planned = _until(lambda: _planned(cluster, expected))
            fitted = _until(lambda: _fitted(deployed.metrics_url, expected))
            cpu = _cgroup_cpu_seconds(deployed.operator.name)
            print(f"{'cluster setup (trace, chart, examples)':<44} {begin - started:7.1f} s")
            print(f"{'container start -> running (runc)':<44} {running - begin:7.1f} s")
            print(f"{'container start -> /healthz answers':<44} {healthy - begin:7.1f} s")
            print(
                f"{'container start -> first round planned all':<44} {planned - begin:7.1f} s"
                f"  ({expected} InferenceDeployments)"
            )
            print(f"{'container start -> every model fitted':<44} {fitted - begin:7.1f} s")
            if cpu is not None:
                print(f"{'container CPU time until then':<44} {cpu:7.1f} s")
        finally:
            if deployed is not None:
                deployed.operator.stop()
            cluster.down()


if __name__ == "__main__":
    sys.exit(main())

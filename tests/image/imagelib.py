"""The operator image, built and run for real: helpers shared by tests/image and
benchmarks/image_figures.py.

* ``build_image(tag)``: ``hack/image build`` (buildah, on the Debian-bootstrapped base);
  returns the image id, size, layer count and build seconds it printed.
* ``serviceaccount_dir(cluster, namespace, name, target)``: what a kubelet mounts at
  /var/run/secrets/kubernetes.io/serviceaccount for a pod of that ServiceAccount (a bound
  token from the TokenRequest API, the cluster CA, the namespace), owned by the image's
  user.
* ``ContainerOperator``: ``hack/image run`` of the image with the chart's Deployment args and
  environment, connected in-cluster style (``KUBERNETES_SERVICE_HOST``/``PORT``); ``pid()``
  is the container's init as the host sees it.
* ``example_documents(series)``: the repository's examples with every demand query pointed
  at one backfilled series (a different scale per service, so each has its own model).
* ``deploy_with_examples(cluster, image, work)``: the whole setup: a backfilled trace, the
  chart installed (kwok provider on), the examples applied, the container started.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
HACK_IMAGE = REPO_ROOT / "hack" / "image"
IMAGE_UID = 65532
CACHE = Path(
    os.environ.get("PEAKWISE_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "peakwise"
)
RUNC_ROOT = CACHE / "image" / "runc"


class ImageError(RuntimeError):
    pass


@dataclass(frozen=True)
class BuiltImage:
    image_id: str
    tag: str
    size: str
    layers: int
    seconds: int
    log: str


def build_image(tag: str, *extra: str, timeout: float = 3600) -> BuiltImage:
    proc = subprocess.run(
        [str(HACK_IMAGE), "build", "--tag", tag, *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise ImageError(f"hack/image build failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    fields = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    return BuiltImage(
        image_id=fields["id"],
        tag=tag,
        size=fields["size"],
        layers=int(fields["layers"]),
        seconds=int(fields["build seconds"]),
        log=proc.stderr,
    )


def serviceaccount_dir(cluster: Any, namespace: str, name: str, target: Path) -> Path:
    token = cluster.kubectl(
        "create", "token", name, "-n", namespace, "--duration=2h"
    ).stdout.strip()
    target.mkdir(parents=True, exist_ok=True)
    files = {
        "token": token,
        "ca.crt": (Path(cluster.state_dir) / "pki" / "ca.crt").read_text(),
        "namespace": namespace,
    }
    for file_name, content in files.items():
        path = target / file_name
        path.write_text(content)
        # As a kubelet does with fsGroup: readable by the pod's user only.
        os.chown(path, IMAGE_UID, IMAGE_UID)
        path.chmod(0o400)
    target.chmod(0o755)
    return target


class ContainerOperator:
    """The operator as a runc container of the built image (``hack/image run``)."""

    def __init__(
        self,
        image: str,
        name: str,
        args: list[str],
        env: dict[str, str],
        serviceaccount: Path,
        log: Path,
    ) -> None:
        self.image, self.name, self.args, self.env = image, name, args, env
        self.serviceaccount, self.log = serviceaccount, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> None:
        command = [str(HACK_IMAGE), "run", "--name", self.name, "--image", self.image]
        command += ["--serviceaccount-dir", str(self.serviceaccount)]
        for key, value in self.env.items():
            command += ["--env", f"{key}={value}"]
        command += ["--", *self.args]
        self.started_at = time.monotonic()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-4000:]
                raise ImageError(f"hack/image run exited ({self.proc.returncode}):\n{tail}")
            try:
                if self.state()["status"] == "running":
                    return
            except ImageError:
                pass  # not created yet
            if time.monotonic() > deadline:
                raise ImageError(f"container {self.name} not running after 120 s; log {self.log}")
            time.sleep(0.2)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def state(self) -> dict[str, Any]:
        proc = subprocess.run(
            ["runc", "--root", str(RUNC_ROOT), "state", self.name],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if proc.returncode != 0:
            raise ImageError(f"runc state {self.name}: {proc.stderr.strip()}")
        return dict(json.loads(proc.stdout))

    def pid(self) -> int:
        """The container's init (the operator) as the host sees it."""
        return int(self.state()["pid"])

    def stop(self, timeout: float = 60) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                subprocess.run(
                    ["runc", "--root", str(RUNC_ROOT), "kill", self.name, "KILL"],
                    capture_output=True,
                    timeout=30,
                    check=False,
                )
                self.proc.wait(timeout=30)
        return self.proc.returncode


def chart_operator_args(
    deployment: dict[str, Any], **ports: int
) -> tuple[list[str], dict[str, str]]:
    """The chart's container args and plain env values, with this machine's ports."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = [a for a in container["args"] if not a.startswith(("--metrics-port", "--liveness-port"))]
    args += [f"--metrics-port={ports['metrics']}", f"--liveness-port={ports['liveness']}"]
    # The ports are the host's (no network namespace): listen on loopback only.
    args += ["--listen-address=127.0.0.1"]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    return args, env


def in_cluster_env(api_url: str, pod_name: str) -> dict[str, str]:
    """What a kubelet puts in every pod's environment for the API server, and POD_ID (the
    chart's downward-API value)."""
    host, port = re.fullmatch(r"https://([^:]+):(\d+)", api_url).groups()  # type: ignore[union-attr]
    return {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port, "POD_ID": pod_name}


SCALES = {"assistant": 1.0, "assistant-70b": 0.05, "query-rewriter": 0.4, "embedder": 1.2}


def example_documents(series: str) -> list[dict[str, Any]]:
    """examples/*.yaml with each demand query reading ``series`` (requests a minute) as
    requests/s, times a per-service scale."""
    docs: list[dict[str, Any]] = []
    for name in ("gpunodepools.yaml", "chat.yaml", "search.yaml"):
        for doc in yaml.safe_load_all((REPO_ROOT / "examples" / name).read_text()):
            if not doc:
                continue
            if doc["kind"] == "InferenceDeployment":
                scale = SCALES[doc["metadata"]["name"]]
                doc["spec"]["demand"]["query"] = (
                    f'sum(peakwise_trace_requests_per_minute{{service="{series}"}}) / 60 * {scale}'
                )
            docs.append(doc)
    return docs


CHART = REPO_ROOT / "charts" / "peakwise"
RELEASE, RELEASE_NS = "pw", "peakwise-system"
SERVICE_ACCOUNT = f"{RELEASE}-peakwise"
SERIES = "image-chat"
# 15 days: every example's forecast history (7 and 14 days) is there in full.
SYNTH = [sys.executable, "-m", "peakwise", "synth-trace", "--days", "15", "--peak", "12000"]
SYNTH += ["--seed", "5"]


@dataclass
class Deployed:
    operator: ContainerOperator
    metrics_url: str
    healthz_url: str


def backfill_example_history(cluster: Any, work: Path) -> None:
    """The synthetic trace every example's demand query reads, in the cluster's Prometheus."""
    trace = work / f"{SERIES}.csv"
    subprocess.run([*SYNTH, "--out", str(trace)], check=True, capture_output=True)
    cluster.backfill_trace(trace, f"service={SERIES}")


def deploy_with_examples(
    cluster: Any, image: BuiltImage, work: Path, interval: str = "5s"
) -> Deployed:
    """Backfill a trace, `helm install` the chart (kwok provider on, the image's tag) into a
    namespace that enforces the restricted Pod Security Standard, apply the examples and start
    the image (by id, so a concurrent rebuild of the tag changes nothing) as the Deployment's
    container."""
    backfill_example_history(cluster, work)
    cluster.kubectl("create", "namespace", RELEASE_NS)
    cluster.kubectl(
        "label", "namespace", RELEASE_NS, "pod-security.kubernetes.io/enforce=restricted"
    )
    repository, _, tag = image.tag.rpartition(":")
    cluster.helm(
        *("install", RELEASE, str(CHART), "--namespace", RELEASE_NS),
        *("--set", f"image.repository={repository}", "--set", f"image.tag={tag}"),
        *("--set", "providers.kwok.enabled=true", "--set", f"operator.interval={interval}"),
        *("--set", f"prometheus.url={cluster.prometheus_url}"),
    )
    # No kubelet here: the Deployment's pod is scheduled nowhere; its container runs below
    # instead, with the pod spec's args, environment and ServiceAccount.
    deployment = cluster.kubectl_json("get", "deployment", SERVICE_ACCOUNT, "-n", RELEASE_NS)
    cluster.kubectl("scale", "deployment", SERVICE_ACCOUNT, "-n", RELEASE_NS, "--replicas=0")
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(example_documents(SERIES)))

    from e2e.promstack import free_port

    ports = {"metrics": free_port(), "liveness": free_port()}
    args, env = chart_operator_args(deployment, **ports)
    env |= in_cluster_env(cluster.api_url, f"{SERVICE_ACCOUNT}-container")
    operator = ContainerOperator(
        image=image.image_id,
        name=f"pw-{hashlib.sha256(str(work).encode()).hexdigest()[:10]}",
        args=args,
        env=env,
        serviceaccount=serviceaccount_dir(
            cluster, RELEASE_NS, SERVICE_ACCOUNT, work / "serviceaccount"
        ),
        log=work / "operator.log",
    )
    operator.start()
    return Deployed(
        operator,
        metrics_url=f"http://127.0.0.1:{ports['metrics']}/metrics",
        healthz_url=f"http://127.0.0.1:{ports['liveness']}/healthz",
    )


def tag_for_checkout() -> str:
    """One tag per checkout: parallel checkouts on one machine build different code."""
    return "localhost/peakwise:test-" + hashlib.sha256(str(REPO_ROOT).encode()).hexdigest()[:8]

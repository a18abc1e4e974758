"""Simulated GPU nodes for the local cluster, managed by kwok.

A node made here carries the annotation ``kwok.x-k8s.io/node=fake`` (the selector
``hack/cluster up`` gives kwok), so kwok marks it Ready, renews its Lease and runs the pods
the real scheduler binds to it (see ``hack/cluster.d/kwok-stages.yaml``).

Labels on every node of a pool:

* ``peakwise.dev/pool=<pool name>``
* ``peakwise.dev/capacity-type=reserved|spot|on-demand``
* ``nvidia.com/gpu.product=<product>`` and ``nvidia.com/gpu.count=<gpus per node>``
* ``node.kubernetes.io/instance-type``, ``kubernetes.io/hostname``, ``type=kwok``

Capacity: ``nvidia.com/gpu`` (gpus per node), cpu, memory, pods. Taints: by default spot
nodes get ``peakwise.dev/capacity-type=spot:NoSchedule`` (only pods that tolerate
interruption land there); pass ``taints=`` to choose others.

Command line (from the ``tests`` folder, with the cluster's kubeconfig)::

    python -m e2e.kwok_nodes create --pool h100-reserved --capacity-type reserved --count 2
    python -m e2e.kwok_nodes list
    python -m e2e.kwok_nodes delete --pool h100-reserved
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

POOL_LABEL = "peakwise.dev/pool"
CAPACITY_TYPE_LABEL = "peakwise.dev/capacity-type"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_COUNT_LABEL = "nvidia.com/gpu.count"
GPU_RESOURCE = "nvidia.com/gpu"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"
CAPACITY_TYPES = ("reserved", "spot", "on-demand")


@dataclasses.dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str = "NoSchedule"

    def to_dict(self) -> dict[str, str]:
        return {"key": self.key, "value": self.value, "effect": self.effect}


@dataclasses.dataclass(frozen=True)
class GPUPool:
    """A pool of identical simulated GPU nodes."""

    name: str
    capacity_type: str = "on-demand"
    gpu_product: str = "NVIDIA-H100-80GB-HBM3"
    gpus_per_node: int = 8
    cpu: str = "96"
    memory: str = "1Ti"
    max_pods: int = 110
    instance_type: str = "sim.gpu"
    taints: tuple[Taint, ...] | None = None  # None: the default for the capacity type
    extra_labels: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.capacity_type not in CAPACITY_TYPES:
            raise ValueError(f"capacity_type must be one of {CAPACITY_TYPES}")
        if self.gpus_per_node < 0:
            raise ValueError("gpus_per_node must be >= 0")

    @property
    def effective_taints(self) -> tuple[Taint, ...]:
        if self.taints is not None:
            return self.taints
        if self.capacity_type == "spot":
            return (Taint(CAPACITY_TYPE_LABEL, "spot"),)
        return ()

    def labels(self) -> dict[str, str]:
        return {
            POOL_LABEL: self.name,
            CAPACITY_TYPE_LABEL: self.capacity_type,
            GPU_PRODUCT_LABEL: self.gpu_product,
            GPU_COUNT_LABEL: str(self.gpus_per_node),
            "node.kubernetes.io/instance-type": self.instance_type,
            "type": "kwok",
            **dict(self.extra_labels),
        }

    def capacity(self) -> dict[str, str]:
        return {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": str(self.max_pods),
            GPU_RESOURCE: str(self.gpus_per_node),
        }

    def node_name(self, index: int) -> str:
        return f"{self.name}-{index}"

    def node_manifest(self, index: int) -> dict[str, Any]:
        name = self.node_name(index)
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {**self.labels(), "kubernetes.io/hostname": name},
                "annotations": {KWOK_ANNOTATION: KWOK_ANNOTATION_VALUE},
            },
            "spec": {"taints": [t.to_dict() for t in self.effective_taints]},
            "status": {"capacity": self.capacity(), "allocatable": self.capacity()},
        }


def _core(api_client: Any) -> Any:
    from kubernetes import client

    return client.CoreV1Api(api_client)


def create_nodes(
    api_client: Any, pool: GPUPool, count: int, start_index: int = 0, timeout: float = 60
) -> list[str]:
    """Create ``count`` nodes of ``pool`` and wait until kwok reports them Ready."""
    from kubernetes.client.exceptions import ApiException

    core = _core(api_client)
    names = []
    for index in range(start_index, start_index + count):
        body = pool.node_manifest(index)
        try:
            core.create_node(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
        # Node status is the kubelet's to write; set the capacity explicitly in case
        # the create dropped it (kwok keeps whatever capacity the node has).
        core.patch_node_status(body["metadata"]["name"], {"status": body["status"]})
        names.append(body["metadata"]["name"])
    wait_ready(api_client, names, timeout=timeout)
    return names


def node_ready(node: Any) -> bool:
    for cond in node.status.conditions or []:
        if cond.type == "Ready":
            return bool(cond.status == "True")
    return False


def wait_ready(api_client: Any, names: Sequence[str], timeout: float = 60) -> None:
    core = _core(api_client)
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending and time.monotonic() < deadline:
        for name in sorted(pending):
            node = core.read_node(name)
            if node_ready(node) and GPU_RESOURCE in (node.status.allocatable or {}):
                pending.discard(name)
        if pending:
            time.sleep(0.3)
    if pending:
        raise TimeoutError(
            f"kwok nodes not Ready within {timeout}s: {sorted(pending)}; is kwok running "
            "(hack/cluster status) and do they carry the annotation "
            f"{KWOK_ANNOTATION}={KWOK_ANNOTATION_VALUE}?"
        )


def list_nodes(api_client: Any, pool: str | None = None) -> list[Any]:
    selector = f"{POOL_LABEL}={pool}" if pool else POOL_LABEL
    return list(_core(api_client).list_node(label_selector=selector).items)


def delete_nodes(api_client: Any, pool: str, timeout: float = 60) -> None:
    core = _core(api_client)
    for node in list_nodes(api_client, pool):
        core.delete_node(node.metadata.name)
    deadline = time.monotonic() + timeout
    while list_nodes(api_client, pool):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nodes of pool {pool} not gone within {timeout}s")
        time.sleep(0.3)


def gpu_pod_spec(
    pool: str,
    gpus: int = 1,
    image: str = "registry.example/model-server:latest",
    tolerations: Sequence[Mapping[str, str]] = (),
) -> dict[str, Any]:
    """A pod spec that asks for ``gpus`` GPUs on nodes of ``pool`` (for tests and demos)."""
    return {
        "nodeSelector": {POOL_LABEL: pool},
        "tolerations": [dict(t) for t in tolerations],
        "containers": [
            {
                "name": "server",
                "image": image,
                "resources": {
                    "requests": {GPU_RESOURCE: str(gpus), "cpu": "1", "memory": "1Gi"},
                    "limits": {GPU_RESOURCE: str(gpus)},
                },
            }
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    from kubernetes import config

    parser = argparse.ArgumentParser(prog="python -m e2e.kwok_nodes", description=__doc__)
    parser.add_argument("--kubeconfig", help="default: $KUBECONFIG")
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="create simulated GPU nodes of a pool")
    create.add_argument("--pool", required=True)
    create.add_argument("--capacity-type", choices=CAPACITY_TYPES, default="on-demand")
    create.add_argument("--count", type=int, default=1)
    create.add_argument("--start-index", type=int, default=0)
    create.add_argument("--gpus-per-node", type=int, default=8)
    create.add_argument("--gpu-product", default="NVIDIA-H100-80GB-HBM3")
    create.add_argument(
        "--taint",
        action="append",
        metavar="KEY=VALUE:EFFECT",
        help="replace the default taints (repeatable; 'none' for no taint)",
    )
    delete = sub.add_parser("delete", help="delete all nodes of a pool")
    delete.add_argument("--pool", required=True)
    sub.add_parser("list", help="list the simulated GPU nodes")
    args = parser.parse_args(argv)

    api_client = config.new_client_from_config(config_file=args.kubeconfig)
    if args.command == "create":
        taints: tuple[Taint, ...] | None = None
        if args.taint:
            parsed = []
            for item in args.taint:
                if item == "none":
                    continue
                kv, _, effect = item.partition(":")
                key, _, value = kv.partition("=")
                parsed.append(Taint(key, value, effect or "NoSchedule"))
            taints = tuple(parsed)
        pool = GPUPool(
            name=args.pool,
            capacity_type=args.capacity_type,
            gpus_per_node=args.gpus_per_node,
            gpu_product=args.gpu_product,
            taints=taints,
        )
        for name in create_nodes(api_client, pool, args.count, args.start_index):
            print(name)
    elif args.command == "delete":
        delete_nodes(api_client, args.pool)
    else:
        for node in list_nodes(api_client):
            labels = node.metadata.labels
            gpus = (node.status.allocatable or {}).get(GPU_RESOURCE, "0")
            print(
                f"{node.metadata.name}\t{labels.get(POOL_LABEL)}\t"
                f"{labels.get(CAPACITY_TYPE_LABEL)}\t{GPU_RESOURCE}={gpus}\t"
                f"{'Ready' if node_ready(node) else 'NotReady'}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Writes the OCI runtime spec (config.json) hack/image run hands to runc.

The container gets what the Helm chart's pod spec asks of a kubelet: the image's user
(65532) and environment, a read-only root filesystem, an emptyDir-like /tmp, /dev/shm
(multiprocessing's semaphores live there: the fit worker is a spawned process), no
capabilities at all, no privilege escalation, the chart's CPU and memory limits, and the
ServiceAccount files at the path in-cluster clients read them from. No rlimits are set:
runc would fail to raise RLIMIT_NPROC above what this machine allows, and the process
inherits the runtime's own limits instead. No network namespace: the container shares the
host's, so it reaches the API server and Prometheus on 127.0.0.1.

Standard library only (runs before any venv exists).

    oci_spec.py --image-config INSPECT.json --rootfs DIR --out config.json --name NAME \
        [--serviceaccount-dir DIR] [--env K=V]... [--memory BYTES] [--cpus N] -- ARGS...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

SERVICEACCOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
NO_CAPABILITIES: dict[str, list[str]] = {
    key: [] for key in ("bounding", "effective", "inheritable", "permitted", "ambient")
}


def _user(spec: str) -> dict[str, int]:
    uid, _, gid = spec.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        sys.exit(f"oci_spec: the image's USER must be numeric uid:gid, got {spec!r}")
    return {"uid": int(uid), "gid": int(gid or uid)}


def _mounts(serviceaccount_dir: str | None, tmp_size: str) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
        },
        # What a kubelet gives a pod: 64 MiB of shared memory.
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
        # The chart's emptyDir on /tmp (sizeLimit tmpSizeLimit).
        {
            "destination": "/tmp",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777", f"size={tmp_size}"],
        },
        {
            "destination": "/etc/hosts",
            "type": "bind",
            "source": "/etc/hosts",
            "options": ["rbind", "ro", "nosuid", "nodev", "noexec"],
        },
    ]
    if serviceaccount_dir:
        mounts.append(
            {
                "destination": SERVICEACCOUNT_PATH,
                "type": "bind",
                "source": str(Path(serviceaccount_dir).resolve()),
                "options": ["rbind", "ro", "nosuid", "nodev", "noexec"],
            }
        )
    return mounts


def build_spec(args: argparse.Namespace) -> dict[str, Any]:
    inspected = json.loads(Path(args.image_config).read_text())
    config = inspected["OCIv1"]["config"]
    command = [*(config.get("Entrypoint") or []), *(args.args or config.get("Cmd") or [])]
    if not command:
        sys.exit("oci_spec: the image has no entrypoint and no arguments were given")
    env = list(config.get("Env") or [])
    for item in args.env:
        if "=" not in item:
            sys.exit(f"oci_spec: --env wants KEY=VALUE, got {item!r}")
        key = item.partition("=")[0]
        env = [e for e in env if e.partition("=")[0] != key] + [item]
    period = 100_000
    return {
        "ociVersion": "1.0.2",
        "hostname": args.name,
        "root": {"path": str(Path(args.rootfs).resolve()), "readonly": True},
        "process": {
            "terminal": False,
            "user": _user(config.get("User") or "0:0"),
            "args": command,
            "env": env,
            "cwd": config.get("WorkingDir") or "/",
            "capabilities": NO_CAPABILITIES,
            "noNewPrivileges": True,
        },
        "mounts": _mounts(args.serviceaccount_dir, args.tmp_size),
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
            "resources": {
                "memory": {"limit": args.memory},
                "cpu": {"quota": int(args.cpus * period), "period": period},
                "devices": [{"allow": False, "access": "rwm"}],
            },
            "maskedPaths": [
                "/proc/acpi",
                "/proc/asound",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/proc/scsi",
                "/sys/firmware",
            ],
            "readonlyPaths": [
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-config", required=True, help="`buildah inspect` of the image")
    parser.add_argument("--rootfs", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--serviceaccount-dir")
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--memory", type=int, default=1024**3, help="bytes (the chart's 1Gi)")
    parser.add_argument("--cpus", type=float, default=1.0, help="CPU quota (the chart's 1)")
    parser.add_argument("--tmp-size", default="256m", help="size of /tmp (the chart's 256Mi)")
    parser.add_argument("args", nargs="*", help="arguments after the entrypoint (default: CMD)")
    args = parser.parse_args()
    Path(args.out).write_text(json.dumps(build_spec(args), indent=2) + "\n")


if __name__ == "__main__":
    main()

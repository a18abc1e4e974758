#!/usr/bin/env bash
# Installs the Debian packages the local cluster, the image tests and the linters need,
# only when missing. Called by hack/setup; safe to run again.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

missing=()
command -v prometheus >/dev/null && command -v promtool >/dev/null || missing+=(prometheus)
command -v openssl >/dev/null || missing+=(openssl)
# The image (hack/image): buildah builds it, runc runs it, mmdebstrap makes its base;
# containerd is the runtime of the real node (hack/node). And the linter of hack/.
for tool in buildah runc mmdebstrap containerd shellcheck; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
# The fleet backtest's HTML report is checked in a real browser: headless Chromium.
command -v chromium >/dev/null || missing+=(chromium)
if ((${#missing[@]} == 0)); then
    exit 0
fi
command -v apt-get >/dev/null \
    || die "need ${missing[*]} (Debian packages); install them with your package manager"
sudo=()
if ((EUID != 0)); then
    command -v sudo >/dev/null || die "need root (or sudo) to apt-get install ${missing[*]}"
    sudo=(sudo)
fi
log "apt-get install ${missing[*]} (first run only)"
export DEBIAN_FRONTEND=noninteractive
# An old or empty package list makes the install fail: refresh it first.
"${sudo[@]}" apt-get update -qq >/dev/null || die "apt-get update failed"
# --no-install-recommends: the daemon only, no node exporter (and buildah without podman's
# extras). The package's own service is not started in containers without an init;
# hack/cluster runs its own Prometheus on loopback anyway.
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"

# Shared settings for the hack/ scripts. Source it; do not run it.
# Everything built or installed is cached outside the work tree, keyed by what
# pins it, so a second run (or a fresh clone on the same machine) starts fast.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEAKWISE_CACHE="${PEAKWISE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/peakwise}"
mkdir -p "$PEAKWISE_CACHE"

log() { printf '\033[1m[peakwise]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31m[peakwise] error:\033[0m %s\n' "$*" >&2; exit 1; }

# The Python environment: one venv per checkout, content of requirements.lock and Python
# version. Per checkout because the project is installed into it editable: two checkouts
# sharing one venv would each point it at themselves.
venv_dir() {
    local key
    key="$(cat "$REPO_ROOT/requirements.lock" <(python3 --version 2>&1) <(echo "$REPO_ROOT") | sha256sum | cut -c1-12)"
    echo "$PEAKWISE_CACHE/venv-$key"
}

ensure_python_env() {
    command -v python3 >/dev/null || die "python3 (3.11 or newer) is needed; install it with apt-get install python3 python3-venv"
    local venv
    venv="$(venv_dir)"
    if [[ ! -x "$venv/bin/python" || ! -f "$venv/.complete" ]]; then
        log "creating the Python environment in $venv (first run only)"
        rm -rf "$venv"
        python3 -m venv "$venv" || die "python3 -m venv failed; on Debian: apt-get install python3-venv"
        "$venv/bin/pip" install -q --upgrade pip
        "$venv/bin/pip" install -q -r "$REPO_ROOT/requirements.lock"
        touch "$venv/.complete"
    fi
    # The project itself, editable, so this checkout is what runs. Checked in isolated mode
    # (-I), so a peakwise/ folder in the current directory is not taken for the install.
    if ! "$venv/bin/python" -I - "$REPO_ROOT" <<'PY' 2>/dev/null
import pathlib, sys, peakwise
sys.exit(0 if pathlib.Path(peakwise.__file__).resolve().parent == pathlib.Path(sys.argv[1], "peakwise").resolve() else 1)
PY
    then
        "$venv/bin/pip" install -q --no-deps --no-build-isolation -e "$REPO_ROOT"
    fi
    export PATH="$venv/bin:$PATH"
    export VIRTUAL_ENV="$venv"
}

# The recipe of the Python base the tests build the image on (hack/image base): Debian
# packages installed by mmdebstrap, standing in for python:3.11-slim-bookworm, which no
# registry here serves. Its hash (this file and mmdebstrap's version) is the base image's
# tag, so changing anything here builds a new base; the old one stays until pruned.
# shellcheck shell=bash
# shellcheck disable=SC2034
BASE_SUITE="bookworm"
# What the Dockerfile needs from its base: `python` and `python -m venv` (pip and
# setuptools from ensurepip), groupadd/useradd, plus what the official slim image also
# ships and the operator's wheels load: libstdc++ (numpy, scipy), CA certificates,
# /etc/services and protocols, time zones.
BASE_PACKAGES=(python3 python3-venv python-is-python3 passwd ca-certificates libstdc++6 netbase tzdata)
# essential: dpkg's Essential set only (no apt: nothing installs packages at run time).
BASE_VARIANT="essential"
# No man pages, docs (copyright notices kept) or translations: 20 MB less.
BASE_DPKG_OPTIONS=(
    "path-exclude=/usr/share/man/*"
    "path-exclude=/usr/share/doc/*"
    "path-include=/usr/share/doc/*/copyright"
    "path-exclude=/usr/share/locale/*"
)
BASE_RECIPE="1"

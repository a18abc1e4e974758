"""Placeholder until the API models land."""

from __future__ import annotations


def write_crds(out_dir: str) -> list[str]:
    raise NotImplementedError


def check_crds(out_dir: str) -> list[str]:
    raise NotImplementedError

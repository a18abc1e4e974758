"""One way to say why an object does not validate: the field, then the reason."""

from __future__ import annotations

from pydantic import ValidationError

_PREFIXES = ("Value error, ", "Assertion failed, ")


def describe(error: ValidationError, limit: int = 3) -> str:
    """`spec.forecast.leadTime: too long ...; spec.replicas: ...` — the first `limit` problems,
    each with the path of the field as written on the wire (camelCase)."""
    problems = []
    for item in error.errors()[:limit]:
        where = ".".join(str(p) for p in item["loc"]) or "object"
        message = item["msg"]
        for prefix in _PREFIXES:
            message = message.removeprefix(prefix)
        problems.append(f"{where}: {message}")
    more = error.error_count() - limit
    if more > 0:
        problems.append(f"and {more} more")
    return "; ".join(problems)

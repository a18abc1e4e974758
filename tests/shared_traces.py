"""Where the public demand traces live: CI checks them out beside the repository."""

from __future__ import annotations

from pathlib import Path

TRACES = Path(__file__).resolve().parents[1] / ".." / "shared" / "traces"
SERVEGEN = TRACES / "servegen_m-mid_per_minute.csv"

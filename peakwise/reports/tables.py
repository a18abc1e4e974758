"""Tables for people, drawn by rich: aligned columns on a terminal, the same plain text in a CI
log or a file (rich writes no colour codes where the output is not a terminal)."""

from __future__ import annotations

import io
from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.table import Table

# Wide enough that a notes column is never wrapped: tables are read in logs and diffs.
WIDTH = 240

# Column headers underlined with dashes, columns two spaces apart, nothing else: plain ASCII.
PLAIN = box.Box("    \n    \n -  \n    \n    \n    \n    \n    \n", ascii=True)


def new_table(columns: Sequence[str], *, numeric_from: int = 1, title: str | None = None) -> Table:
    """A table whose columns from ``numeric_from`` on (up to a last text column named
    ``notes``) are right-aligned numbers."""
    table = Table(
        box=PLAIN,
        title=title,
        title_justify="left",
        show_edge=False,
        pad_edge=False,
        padding=(0, 1),
    )
    for i, name in enumerate(columns):
        numeric = i >= numeric_from and name != "notes"
        table.add_column(name, justify="right" if numeric else "left", no_wrap=True)
    return table


def render(table: Table) -> str:
    """The table as plain text (no colour, no trailing spaces)."""
    buffer = io.StringIO()
    Console(file=buffer, width=WIDTH, color_system=None, force_terminal=False).print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()).strip("\n")

"""Text at the console's width: prose wrapped between words, tables that drop their optional
columns (lowest priority first) instead of cutting a cell.

Every console renderer prints through these: no printed line is wider than the console, and no
table cell ends in an ellipsis. A word longer than a line (a path) is folded onto the next line
rather than cut.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

#: the natural width of a table is measured against this many columns (no wrapping)
_UNBOUNDED = 100_000


def width(piped: int = 100, stderr: bool = False) -> int:
    """The console's width: $COLUMNS when set, the terminal's, else ``piped`` (piped output)."""
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    stream = sys.stderr if stderr else sys.stdout
    try:
        return os.get_terminal_size(stream.fileno()).columns if stream is not None and stream.isatty() else piped
    except (OSError, ValueError, AttributeError):  # no terminal behind the stream after all
        return piped


def make_console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(width=width(stderr=stderr), stderr=stderr)


def prose(console: Any, text: str, style: str | None = None, lead: str = "") -> None:
    """One paragraph, wrapped between words at the console's width. ``lead`` (a bullet, an
    indent) starts the first line; wrapped lines are indented under the text after it."""
    from rich.text import Text

    body = Text(text, style=style or "")
    if not lead:
        console.print(body, highlight=False, overflow="fold")
        return
    room = max(console.width - len(lead), 8)
    for i, line in enumerate(body.wrap(console, room, overflow="fold")):
        line.rstrip()
        console.print(Text(lead if i == 0 else " " * len(lead)) + line, highlight=False, overflow="fold")


def natural_width(console: Any, renderable: Any) -> int:
    """How wide ``renderable`` is when nothing wraps."""
    from rich.measure import Measurement

    return Measurement.get(console, console.options.update_width(_UNBOUNDED), renderable).maximum


def fit_table(console: Any, columns: Sequence[str], rows: Sequence[Sequence[Any]], drop: Sequence[str] = (),
              left: Sequence[str] = (), **table_kw: Any) -> Any:
    """A rich Table of ``rows`` under ``columns`` that fits the console: the columns named in
    ``drop`` are left out, first one first, until the widest cell of every column fits whole.
    If even the remaining columns are too wide, cells fold onto a second line (never cut).
    ``left``: left-justified columns (the others are right-justified). One style for every
    table parity prints: a rule under the header, no vertical rules (``table_kw`` overrides)."""
    from rich import box
    from rich.table import Table

    table_kw = {"box": box.SIMPLE_HEAD, "header_style": "bold", "pad_edge": False, "show_edge": False, **table_kw}
    shown = list(columns)
    pending = [c for c in drop if c in shown]
    while True:
        index = [columns.index(c) for c in shown]
        table = Table(**table_kw)
        for c in shown:
            table.add_column(c, justify="left" if c in left else "right", overflow="fold")
        for row in rows:
            table.add_row(*[row[i] for i in index])
        if not pending or natural_width(console, table) <= console.width:
            for col in table.columns:  # it fits: keep every cell on one line
                col.no_wrap = natural_width(console, table) <= console.width
            return table
        shown.remove(pending.pop(0))

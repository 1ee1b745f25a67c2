"""Console renderer: a rich table, one row per probe in execution order, then the verdict."""
from __future__ import annotations

import math
import sys
from typing import Any

from parity.report.data import ProbeRow, ReportData

COLUMNS = ("probe", "ref mean", "ref sum", "cand mean", "cand sum", "max abs err",
           "mean abs err", "max rel err", "cosine", "status")


def fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return f"{x:.{digits}g}" if x != 0 else "0"
    return str(x)


def _cos(x: float | None) -> str:
    return "-" if x is None else f"{x:.6f}"


def _status(row: ProbeRow) -> str:
    if row.status == "pass":
        return "[green]PASS[/green]"
    if row.status == "fail":
        return "[bold red]FAIL[/bold red]"
    return f"[dim]{row.status}[/dim]"


def render(report: ReportData, console: Any = None, show_all: bool = True) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() else 160)
    run = report.run
    cand = run.get("candidate", {})
    title = (f"parity: {run.get('model')} ({run.get('source')}) | reference {run['reference'].get('dtype')} "
             f"{run['reference'].get('device')} vs {cand.get('name')} {cand.get('dtype')} {cand.get('device')} | "
             f"{run.get('tokens')} tokens")
    table = Table(title=title, title_justify="left", header_style="bold")
    isolated = any(r.isolated_max_abs_err is not None for r in report.probes)
    columns = list(COLUMNS)
    if isolated:  # the block's own (teacher-forced) error, next to the accumulated one
        columns.insert(columns.index("max abs err") + 1, "isolated err")
    for c in columns:
        table.add_column(c, justify="left" if c in ("probe", "status") else "right", no_wrap=True)
    for r in report.probes:
        if not show_all and r.status not in ("fail",):
            continue
        cells = [r.name, fmt(r.ref_mean), fmt(r.ref_sum), fmt(r.cand_mean), fmt(r.cand_sum), fmt(r.max_abs_err, 3)]
        if isolated:
            cells.append(fmt(r.isolated_max_abs_err, 3))
        cells += [fmt(r.mean_abs_err, 3), fmt(r.max_rel_err, 3), _cos(r.cosine), _status(r)]
        table.add_row(*cells)
    console.print(table)
    render_summary(report, console)


def render_summary(report: ReportData, console: Any) -> None:
    s = report.summary
    style = "bold green" if s["verdict"] == "pass" else "bold red"
    console.print(s["message"], style=style, markup=False, highlight=False, soft_wrap=True)
    diag = s.get("diagnosis")
    if diag:
        console.print(f"Diagnosis: {diag.get('hint')}", markup=False, highlight=False, soft_wrap=True)
        for ev in diag.get("evidence", []):
            console.print(f"  - {ev}", markup=False, highlight=False, soft_wrap=True)

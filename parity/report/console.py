"""Console renderer: a rich table, one row per probe in execution order, then the verdict."""
from __future__ import annotations

import math
import sys
from typing import Any

from parity.report.data import ProbeRow, ReportData

COLUMNS = ("probe", "ref mean", "ref sum", "cand mean", "cand sum", "max abs err",
           "mean abs err", "max rel err", "cosine", "status")
#: calibrated runs: the candidate's error over the precision twin's, after "max abs err"
EXCESS_COLUMN = "excess"


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


def xfmt(x: Any) -> str:
    """An excess ratio as diagnose writes it: x0.57, x1.3, x455, x2.4e+04; '-' for missing."""
    if x is None:
        return "-"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    if not math.isfinite(x):
        return "xinf"
    return f"x{x:.2g}" if x < 10 else f"x{x:.0f}" if x < 1e4 else f"x{x:.2g}"


def calibrated(report: ReportData) -> bool:
    """Whether the report's verdict is calibrated (schema 1.0 reports are absolute)."""
    mode = (report.run.get("verdict") or {}).get("mode") or report.summary.get("tolerance")
    if mode is not None:
        return mode == "calibrated"
    return any(r.excess is not None for r in report.probes)


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
    excess = calibrated(report)
    isolated = any(r.isolated_max_abs_err is not None for r in report.probes)
    for c in columns(excess, isolated):
        table.add_column(c, justify="left" if c in ("probe", "status") else "right", no_wrap=True)
    for r in report.probes:
        if not show_all and r.status not in ("fail",):
            continue
        table.add_row(*_cells(r, excess, isolated))
    console.print(table)
    render_summary(report, console)


def columns(excess: bool, isolated: bool) -> list[str]:
    """The table's columns: excess (calibrated) and then the block's own (teacher-forced)
    error right after the accumulated max abs err."""
    out = list(COLUMNS)
    at = out.index("max abs err") + 1
    extra = ([EXCESS_COLUMN] if excess else []) + (["isolated err"] if isolated else [])
    return out[:at] + extra + out[at:]


def _cells(r: ProbeRow, excess: bool, isolated: bool) -> list[str]:
    cells = [r.name, fmt(r.ref_mean), fmt(r.ref_sum), fmt(r.cand_mean), fmt(r.cand_sum), fmt(r.max_abs_err, 3)]
    if excess:
        cells.append(xfmt(r.excess))
    if isolated:
        cells.append(fmt(r.isolated_max_abs_err, 3))
    return cells + [fmt(r.mean_abs_err, 3), fmt(r.max_rel_err, 3), _cos(r.cosine), _status(r)]


def render_summary(report: ReportData, console: Any) -> None:
    s = report.summary
    style = "bold green" if s["verdict"] == "pass" else "bold red"
    console.print(s["message"], style=style, markup=False, highlight=False, soft_wrap=True)
    diag = s.get("diagnosis")
    if diag:
        console.print(f"Diagnosis: {diag.get('hint')}", markup=False, highlight=False, soft_wrap=True)
        for ev in diag.get("evidence", []):
            console.print(f"  - {ev}", markup=False, highlight=False, soft_wrap=True)

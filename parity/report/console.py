"""Console renderer: a rich table, one row per probe in execution order, then the verdict."""
from __future__ import annotations

import math
from typing import Any

from parity.report import term
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


#: the default table: what a verdict rests on, designed for 100 columns; optional columns
#: are dropped right to left (nrmse, then isolated err, then cosine) when the width is less
COMPACT = ("probe", "max abs err", EXCESS_COLUMN, "isolated err", "nrmse", "cosine", "status")
OPTIONAL = ("nrmse", "isolated err", "cosine")
#: --wide drops these (first one first) when the console is too narrow: never the probe name,
#: the error, the excess or the status
WIDE_DROP = ("ref sum", "cand sum", "ref mean", "cand mean", "max rel err", "mean abs err", *OPTIONAL)
#: tables longer than this collapse runs of passing probes (failures and their neighbours stay)
LONG_TABLE = 40
CONTEXT = 2
#: failing probes a collapsed table shows one by one (the first ones); the rest are counted
SHOWN_FAILURES = 20


def width(piped: int = 100) -> int:
    """The console's width (parity.report.term.width)."""
    return term.width(piped)


def make_console() -> Any:
    return term.make_console()


def title_of(report: ReportData) -> str:
    """One line: model, source, both sides, tokens (what a run, a dump comparison has)."""
    run = report.run
    cand, ref = run.get("candidate") or {}, run.get("reference") or {}
    where = run.get("source") or run.get("checkpoint") or "dumps"
    model = run.get("model") or "model of the dumps"
    return (f"parity: {model} ({where}) | reference {_side(ref)} vs {_side(cand, cand.get('name') or 'candidate')} | "
            f"{run.get('tokens')} tokens")


def _side(d: dict[str, Any], name: str | None = None) -> str:
    return " ".join(str(x) for x in (name, d.get("dtype"), d.get("device")) if x)


def render(report: ReportData, console: Any = None, show_all: bool = True, wide: bool = False,
           every_row: bool = False) -> None:
    """The probe table and the verdict. ``show_all`` False: failing probes only; ``wide``:
    every statistic (ref/cand mean and sum, mean abs and max rel error); ``every_row``: no
    collapsing of passing probes in long tables."""
    from rich import box

    console = console or make_console()
    excess = calibrated(report)
    isolated = any(r.isolated_max_abs_err is not None for r in report.probes)
    rows = [r for r in report.probes if show_all or r.status == "fail"]
    cols = columns(excess, isolated) if wide else _compact(excess, isolated)
    cells = []
    for item in _collapse(rows) if show_all and not every_row and len(rows) > LONG_TABLE else rows:
        if isinstance(item, list):  # a run of passing probes, collapsed
            row = {c: "" for c in cols}
            top = max((r.excess for r in item if r.excess is not None), default=None)
            fails = sum(r.status == "fail" for r in item)
            row.update({"probe": f"[dim]... {len(item)} more[/dim]",
                        EXCESS_COLUMN: f"[dim]<={xfmt(top)}[/dim]" if top is not None else "",
                        "status": f"[bold red]{fails} FAIL[/bold red]" if fails else "[dim]--all[/dim]"})
        else:
            row = _cells(item)
        cells.append([row[c] for c in cols])
    table = term.fit_table(console, cols, cells, drop=WIDE_DROP if wide else OPTIONAL, left=("probe", "status"),
                           box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, show_edge=False)
    term.prose(console, title_of(report))
    console.print(table)
    render_summary(report, console)


def _compact(excess: bool, isolated: bool) -> list[str]:
    return [c for c in COMPACT if (c != EXCESS_COLUMN or excess) and (c != "isolated err" or isolated)]


def _collapse(rows: list[ProbeRow]) -> list[ProbeRow | list[ProbeRow]]:
    """Failing probes, CONTEXT rows around them and the first and last rows stay; each run of
    other probes becomes one line (a list) saying how many there are and their largest excess."""
    keep = {0, 1, 2, len(rows) - 3, len(rows) - 2, len(rows) - 1}
    failing = [i for i, r in enumerate(rows) if r.status == "fail"]
    for i in failing[:SHOWN_FAILURES]:
        keep.update(range(i - CONTEXT, i + CONTEXT + 1))
    out: list[ProbeRow | list[ProbeRow]] = []
    hidden: list[ProbeRow] = []
    for i, r in enumerate(rows):
        if i in keep:
            if hidden:
                out.append(hidden)
                hidden = []
            out.append(r)
        else:
            hidden.append(r)
    if hidden:
        out.append(hidden)
    return out


def columns(excess: bool, isolated: bool) -> list[str]:
    """The wide table's columns: excess (calibrated) and then the block's own (teacher-forced)
    error right after the accumulated max abs err."""
    out = list(COLUMNS)
    at = out.index("max abs err") + 1
    extra = ([EXCESS_COLUMN] if excess else []) + (["isolated err"] if isolated else [])
    return out[:at] + extra + out[at:]


def _cells(r: ProbeRow) -> dict[str, str]:
    """Every column's cell of a row, by column name."""
    from rich.markup import escape

    return {
        "probe": escape(r.name), "ref mean": fmt(r.ref_mean), "ref sum": fmt(r.ref_sum), "cand mean": fmt(r.cand_mean),
        "cand sum": fmt(r.cand_sum), "max abs err": fmt(r.max_abs_err, 3), EXCESS_COLUMN: xfmt(r.excess),
        "isolated err": fmt(r.isolated_max_abs_err, 3), "mean abs err": fmt(r.mean_abs_err, 3),
        "max rel err": fmt(r.max_rel_err, 3), "nrmse": fmt(r.nrmse, 3), "cosine": _cos(r.cosine), "status": _status(r),
    }


def render_summary(report: ReportData, console: Any) -> None:
    s = report.summary
    term.prose(console, s["message"], "bold green" if s["verdict"] == "pass" else "bold red")
    diag = s.get("diagnosis")
    if diag:
        term.prose(console, f"Diagnosis: {diag.get('hint')}")
        for ev in diag.get("evidence", []):
            term.prose(console, str(ev), lead="  - ")

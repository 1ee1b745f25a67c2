"""What changed between two runs (e.g. before and after a fix), probe by probe.

Reads two ReportData and lines up their rows by probe name; the console and HTML diff
renderers read the resulting RunDiff only.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from parity.report.charts import budget_of
from parity.report.console import calibrated
from parity.report.data import ReportData, _jsonable

#: error ratios beyond these count as a change (below: "same")
BETTER, WORSE = 0.5, 2.0


@dataclass
class ProbeChange:
    name: str
    status_a: str | None
    status_b: str | None
    err_a: float | None
    err_b: float | None
    ratio: float | None  # err_b / err_a
    change: str  # fixed | broke | better | worse | same | only in A | only in B | not compared
    #: calibrated runs: each run's excess over its precision twin (None in absolute runs)
    excess_a: float | None = None
    excess_b: float | None = None


@dataclass
class RunDiff:
    label_a: str
    label_b: str
    verdict_a: str
    verdict_b: str
    message_a: str
    message_b: str
    rows: list[ProbeChange] = field(default_factory=list)
    #: calibrated runs: each run's budget (a probe fails when its excess is over it)
    budget_a: float | None = None
    budget_b: float | None = None
    #: what a row is: a probe (two `parity run` reports) or a decode step (two `parity generate` reports)
    unit: str = "probe"

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            out[r.change] = out.get(r.change, 0) + 1
        return out

    @property
    def has_excess(self) -> bool:
        """Whether either run is calibrated (an excess on some probe)."""
        return any(r.excess_a is not None or r.excess_b is not None for r in self.rows)

    @property
    def regressed(self) -> bool:
        return any(r.change == "broke" for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable({**{k: v for k, v in asdict(self).items() if k != "rows"},
                          "counts": self.counts, "rows": [asdict(r) for r in self.rows]})


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return None
    if a == 0:
        return 1.0 if b == 0 else math.inf
    return b / a


def _change(sa: str | None, sb: str | None, ratio: float | None) -> str:
    if sa is None:
        return "only in B"
    if sb is None:
        return "only in A"
    if sa == "fail" and sb == "pass":
        return "fixed"
    if sa == "pass" and sb == "fail":
        return "broke"
    if sa not in ("pass", "fail") or sb not in ("pass", "fail") or ratio is None:
        return "not compared"
    if ratio <= BETTER:
        return "better"
    if ratio >= WORSE:
        return "worse"
    return "same"


def label(report: ReportData) -> str:
    run, cand = report.run, report.run.get("candidate") or {}
    return f"{run.get('model')} {cand.get('name')} {cand.get('dtype')} {run.get('created', '')}".strip()


def _budget(report: ReportData) -> float | None:
    """A calibrated run's budget, as the report states it; None for absolute runs."""
    return budget_of(report) if calibrated(report) else None


def diff_reports(a: ReportData, b: ReportData) -> RunDiff:
    rows_a = {r.name: r for r in a.probes}
    rows_b = {r.name: r for r in b.probes}
    names = [r.name for r in a.probes] + [r.name for r in b.probes if r.name not in rows_a]
    out = RunDiff(label(a), label(b), a.summary.get("verdict", "?"), b.summary.get("verdict", "?"),
                  a.summary.get("message", ""), b.summary.get("message", ""),
                  budget_a=_budget(a), budget_b=_budget(b))
    for n in names:
        ra, rb = rows_a.get(n), rows_b.get(n)
        ea = ra.max_abs_err if ra else None
        eb = rb.max_abs_err if rb else None
        ratio = _ratio(ea, eb)
        out.rows.append(ProbeChange(n, ra.status if ra else None, rb.status if rb else None, ea, eb, ratio,
                                    _change(ra.status if ra else None, rb.status if rb else None, ratio),
                                    ra.excess if ra else None, rb.excess if rb else None))
    return out


def kind(report: ReportData) -> str:
    """"generate" for a `parity generate` report (its rows are decode steps), else "run"."""
    return "generate" if report.generation else "run"


def diff_generations(a: ReportData, b: ReportData) -> RunDiff:
    """Two `parity generate` runs, step by step: each step's status (pass, fail, not compared
    once the streams parted), its logits max abs err and excess in A and in B."""
    steps_a = {s["step"]: s for s in (a.generation or {}).get("steps", [])}
    steps_b = {s["step"]: s for s in (b.generation or {}).get("steps", [])}
    out = RunDiff(label(a), label(b), a.summary.get("verdict", "?"), b.summary.get("verdict", "?"),
                  a.summary.get("message", ""), b.summary.get("message", ""),
                  budget_a=(a.generation or {}).get("budget"), budget_b=(b.generation or {}).get("budget"), unit="step")
    for n in sorted(set(steps_a) | set(steps_b)):
        sa, sb = steps_a.get(n), steps_b.get(n)
        ea = sa.get("max_abs_err") if sa else None
        eb = sb.get("max_abs_err") if sb else None
        ratio = _ratio(ea, eb)
        st_a, st_b = _step_status(sa), _step_status(sb)
        out.rows.append(ProbeChange(f"step {n}", st_a, st_b, ea, eb, ratio, _change(st_a, st_b, ratio),
                                    sa.get("excess") if sa else None, sb.get("excess") if sb else None))
    return out


def _step_status(step: dict[str, Any] | None) -> str | None:
    if step is None:
        return None
    if not step.get("comparable"):
        return "not compared"
    return "pass" if step.get("passed") else "fail"


def render_console(diff: RunDiff, console: Any = None, show_all: bool = False) -> None:
    """Rich table of the probes that changed (all probes with ``show_all``)."""
    from parity.report import term

    console = console or term.make_console()
    excess = diff.has_excess
    rows = [_cells(r, excess) for r in diff.rows if show_all or r.change not in ("same", "not compared")]
    term.prose(console, f"parity diff | A: {diff.label_a} | B: {diff.label_b}")
    cols = [diff.unit, *_columns(excess)[1:]]
    console.print(term.fit_table(console, cols, rows, drop=("B/A", "max abs err A", "max abs err B"),
                                 left=(diff.unit, "status A", "status B", "change"), header_style="bold"))
    counts = ", ".join(f"{v} {k}" for k, v in diff.counts.items())
    term.prose(console, f"A: {diff.message_a}")
    term.prose(console, f"B: {diff.message_b}")
    term.prose(console, f"{len(diff.rows)} {diff.unit}s: {counts}")


def _columns(excess: bool) -> list[str]:
    """The diff table's columns; each run's excess after the max abs errors when either is calibrated."""
    return ["probe", "status A", "status B", "max abs err A", "max abs err B", "B/A",
            *(["excess A", "excess B"] if excess else []), "change"]


_STYLE = {"fixed": "green", "better": "green", "broke": "bold red", "worse": "red"}


def _cells(r: ProbeChange, excess: bool) -> list[str]:
    from parity.report.console import fmt, xfmt

    ch = f"[{_STYLE[r.change]}]{r.change}[/]" if r.change in _STYLE else r.change
    from rich.markup import escape

    cells = [escape(r.name), r.status_a or "-", r.status_b or "-", fmt(r.err_a, 3), fmt(r.err_b, 3), fmt(r.ratio, 3)]
    return cells + ([xfmt(r.excess_a), xfmt(r.excess_b)] if excess else []) + [ch]

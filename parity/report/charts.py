"""Geometry for the HTML report's inline SVG charts (pure Python, no JS library).

These functions only place numbers already in ReportData on axes; they compute no
statistics. The template draws the shapes they describe.

Calibrated reports (schema 1.1) carry, per probe, the precision twin's error (the
reference run in the candidate's dtype) and the candidate's *excess* over it: the error
charts draw the twin's error as a dashed line of the same colour, the excess chart draws
the excess with the budget as its limit, and the heatmap shades cells by excess.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from parity.capture import probes as canon
from parity.report.console import calibrated, fmt, xfmt
from parity.report.data import ProbeRow, ReportData

PALETTE = {
    "attn_in": "#7f8c8d", "attn.q": "#b39ddb", "attn.k": "#9575cd", "attn.v": "#7e57c2",
    "attn.q_rot": "#4dd0e1", "attn.k_rot": "#26a69a", "attn_out": "#1f77b4", "resid_mid": "#8c564b",
    "mlp_in": "#bcbd22", "mlp_out": "#ff7f0e", "resid_post": "#2ca02c",
}
#: lines drawn by default; the other points start hidden (legend toggles them)
PRIMARY = ("attn_out", "mlp_out", "resid_post")
#: the precision twin's counterpart of each error metric
TWIN = {"max_abs_err": "twin_max_abs_err", "nrmse": "twin_nrmse"}
#: a calibrated report without a budget (should not happen) is drawn against calibrate's default
FALLBACK_BUDGET = 8.0
#: heatmap colours: pale (no error / within the twin) -> amber (at the limit) -> red (over it)
PALE, AMBER, RED, DARK_RED, GREY = "#e8f5e9", "#ffc107", "#e05252", "#8e0d0d", "#9e9e9e"


def point_of(row: ProbeRow) -> str:
    return row.name.split(".", 2)[2] if row.block is not None else row.name


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def budget_of(report: ReportData) -> float:
    """The calibrated verdict's budget, as the report states it."""
    b = (report.run.get("verdict") or {}).get("budget", report.summary.get("budget"))
    return float(b) if _finite(b) and b > 0 else FALLBACK_BUDGET


@dataclass
class Series:
    point: str
    color: str
    path: str
    dots: list[dict[str, Any]] = field(default_factory=list)
    primary: bool = False
    #: the precision twin's error at the same probes (dashed, same colour); None: no twin
    twin_path: str | None = None


@dataclass
class Line:
    """A horizontal line across the plot: a limit (red, dashed) or a guide (grey, dotted)."""

    y: float
    label: str
    limit: bool = True
    label_y: float = 0.0  # in the right margin, level with the line (moved apart where two are close)


@dataclass
class DepthChart:
    width: int
    height: int
    left: int
    top: int
    plot_w: int
    plot_h: int
    xticks: list[tuple[float, str]]
    yticks: list[tuple[float, str]]
    series: list[Series]
    extras: list[dict[str, Any]]
    lines: list[Line]
    metric: str
    ylabel: str = ""
    xlabel: str = "block"
    twin: bool = False
    empty: bool = False


@dataclass
class _Axes:
    """Slots along x (evenly spaced), a log10 scale along y from 10^lo to 10^hi."""

    left: int
    top: int
    plot_w: int
    plot_h: int
    slots: int
    lo: int
    hi: int

    def x(self, slot: float) -> float:
        return round(self.left + self.plot_w * (slot + 0.5) / self.slots, 1)

    def y(self, v: float) -> float:
        lv = math.log10(v) if v > 0 else self.lo
        return round(self.top + self.plot_h * (self.hi - lv) / (self.hi - self.lo), 1)


_MARGIN = (62, 14, 64, 34)  # left, top, right (the horizontal lines' labels), bottom


def _axes(values: Sequence[float], slots: int, width: int, height: int) -> _Axes | None:
    """Axes spanning ``values`` (zeros sit at the bottom); None when nothing is positive."""
    pos = [v for v in values if v > 0]
    if not pos:
        return None
    left, top, right, bottom = _MARGIN
    lo = math.floor(math.log10(min(pos))) - (1 if 0.0 in values else 0)
    hi = max(math.ceil(math.log10(max(pos))), lo + 1)
    return _Axes(left, top, width - left - right, height - top - bottom, slots, lo, hi)


def _empty(metric: str, width: int, height: int, ylabel: str) -> DepthChart:
    left, top, right, bottom = _MARGIN
    return DepthChart(width, height, left, top, width - left - right, height - top - bottom, [], [], [], [], [],
                      metric, ylabel, empty=True)


def _get(row: ProbeRow, attr: str | None) -> float | None:
    v = getattr(row, attr) if attr else None
    return v if _finite(v) else None


def _path(coords: Sequence[tuple[float, float]]) -> str:
    return "M" + " L".join(f"{cx},{cy}" for cx, cy in coords)


def _tip(row: ProbeRow, metric: str, twin: str | None, show: Callable[[Any], str]) -> str:
    """A point's tooltip: its value, the twin's beside it."""
    text = f"{row.name}: {show(getattr(row, metric))}"
    if twin and getattr(row, twin) is not None:
        text += f" (twin {show(getattr(row, twin))})"
    if metric == "excess" and row.isolated_excess is not None:
        text += f", isolated {xfmt(row.isolated_excess)}"
    return text


def _fmt(metric: str) -> Callable[[Any], str]:
    return xfmt if metric == "excess" else fmt


def _series(rows: list[ProbeRow], metric: str, twin: str | None, ax: _Axes) -> list[Series]:
    """One line per block point (the twin's beside it), in execution order."""
    show = _fmt(metric)
    out: list[Series] = []
    for point in canon.BLOCK_POINTS:
        pts = sorted(((r.block, r) for r in rows if r.block is not None and point_of(r) == point
                      and _get(r, metric) is not None), key=lambda p: p[0])
        if not pts:
            continue
        coords = [(ax.x(b + 1), ax.y(getattr(r, metric))) for b, r in pts]
        dots = [{"x": cx, "y": cy, "name": r.name, "value": getattr(r, metric), "fail": r.passed is False,
                 "tip": _tip(r, metric, twin, show)} for (cx, cy), (_, r) in zip(coords, pts)]
        tw = [(ax.x(b + 1), ax.y(v)) for b, r in pts if (v := _get(r, twin)) is not None]
        out.append(Series(point, PALETTE.get(point, "#555"), _path(coords), dots, point in PRIMARY,
                          _path(tw) if len(tw) >= 2 else None))
    return out


def _extras(rows: list[ProbeRow], metric: str, twin: str | None, ax: _Axes, nb: int) -> list[dict[str, Any]]:
    """Head and tail probes (embed, rope, final_norm, logits) as squares; the twin's hollow."""
    show = _fmt(metric)
    out = []
    for r in rows:
        if r.block is None and _get(r, metric) is not None:
            slot = 0 if r.name in canon.HEAD_PROBES else nb + 1
            tv = _get(r, twin)
            out.append({"x": ax.x(slot), "y": ax.y(getattr(r, metric)), "name": r.name, "value": getattr(r, metric),
                        "fail": r.passed is False, "tip": _tip(r, metric, twin, show),
                        "twin_y": None if tv is None else ax.y(tv)})
    _spread_labels(out, bottom=ax.top + ax.plot_h - 2)
    return out


def _limits(report: ReportData, metric: str) -> list[tuple[float, str, bool]]:
    """(value, label, is the limit) of the horizontal lines of ``metric``'s chart."""
    if metric == "excess":
        budget = budget_of(report)
        return [(1.0, "twin x1", False), (budget, f"budget {xfmt(budget)}", True)]
    if metric == "max_abs_err" and not calibrated(report):
        atol = ((report.run.get("tolerances") or {}).get("default") or {}).get("atol")
        if atol:
            return [(atol, f"atol {atol:g}", True)]
    return []


def _lines(ax: _Axes, specs: Sequence[tuple[float, str, bool]], gap: float = 11.0) -> list[Line]:
    """Horizontal lines at (value, label, is the limit), their labels kept ``gap`` apart."""
    out = sorted((Line(ax.y(v), label, limit) for v, label, limit in specs), key=lambda ln: ln.y)
    below = -math.inf
    for ln in out:
        ln.label_y = round(max(ln.y + 4, below + gap), 1)
        below = ln.label_y
    return out


def _twin_metric(rows: list[ProbeRow], metric: str) -> str | None:
    twin = TWIN.get(metric)
    return twin if twin and any(_get(r, twin) is not None for r in rows) else None


def _ylabel(metric: str) -> str:
    return "excess over twin (log)" if metric == "excess" else f"{metric} (log)"


def _yticks(ax: _Axes, metric: str) -> list[tuple[float, str]]:
    if metric == "excess":
        return [(ax.y(10.0**e), f"x{10.0**e:g}") for e in range(ax.lo, ax.hi + 1)]
    return [(ax.y(10.0**e), f"1e{e}") for e in range(ax.lo, ax.hi + 1)]


def depth_chart(report: ReportData, metric: str = "max_abs_err", width: int = 820, height: int = 300) -> DepthChart:
    """``metric`` (log scale) against depth: one line per block point, head/tail probes as
    squares; the twin's error dashed beside the candidate's (calibrated reports); the
    limit (absolute: the default atol; excess: the budget) as a dashed red line."""
    rows = [r for r in report.probes if r.compared]
    blocks = sorted({r.block for r in rows if r.block is not None})
    nb = int(report.run.get("num_blocks") or (blocks[-1] + 1 if blocks else 0))
    twin = _twin_metric(rows, metric)
    limits = _limits(report, metric)
    vals = [v for r in rows for v in (_get(r, metric), _get(r, twin)) if v is not None]
    ax = _axes(vals + [v for v, _, _ in limits], nb + 2, width, height) if vals else None  # embed | blocks | tail
    if ax is None:
        return _empty(metric, width, height, _ylabel(metric))
    step = max(1, math.ceil(nb / 16))
    xticks = [(ax.x(0), "head")] + [(ax.x(b + 1), str(b)) for b in range(0, nb, step)] + [(ax.x(nb + 1), "tail")]
    lines = _lines(ax, limits)
    return DepthChart(width, height, ax.left, ax.top, ax.plot_w, ax.plot_h, xticks, _yticks(ax, metric),
                      _series(rows, metric, twin, ax), _extras(rows, metric, twin, ax, nb), lines, metric,
                      _ylabel(metric), twin=twin is not None)


def step_chart(gen: dict[str, Any] | None, width: int = 820, height: int = 200) -> DepthChart | None:
    """A generation's excess per compared step, with the budget; None without excess."""
    steps = [s for s in (gen or {}).get("steps", []) if s.get("comparable") and _finite(s.get("excess"))]
    if not steps:
        return None
    budget = (gen or {}).get("budget")
    budget = float(budget) if _finite(budget) and budget > 0 else FALLBACK_BUDGET
    n = max(s["step"] for s in steps) + 1
    ax = _axes([s["excess"] for s in steps] + [1.0, budget], n, width, height)
    assert ax is not None  # the budget is positive
    coords = [(ax.x(s["step"]), ax.y(s["excess"])) for s in steps]
    dots = [{"x": cx, "y": cy, "name": None, "value": s["excess"], "fail": s.get("passed") is False,
             "tip": f"step {s['step']}: excess {xfmt(s['excess'])}, max abs err {fmt(s.get('max_abs_err'), 3)}"}
            for (cx, cy), s in zip(coords, steps)]
    every = max(1, math.ceil(n / 20))
    xticks = [(ax.x(i), str(i)) for i in range(0, n, every)]
    lines = _lines(ax, [(1.0, "twin x1", False), (budget, f"budget {xfmt(budget)}", True)])
    series = [Series("steps", PALETTE["attn_out"], _path(coords), dots, primary=True)]
    return DepthChart(width, height, ax.left, ax.top, ax.plot_w, ax.plot_h, xticks, _yticks(ax, "excess"), series, [],
                      lines, "excess", _ylabel("excess"), xlabel="step")


def _spread_labels(extras: list[dict[str, Any]], gap: float = 11.0, bottom: float = math.inf) -> None:
    """Labels of dots in the same column move apart so they do not overlap, and up where
    the lowest would fall below ``bottom`` (onto the x axis' labels)."""
    columns: dict[float, list[dict[str, Any]]] = {}
    for d in sorted(extras, key=lambda e: (e["x"], e["y"])):
        col = columns.setdefault(d["x"], [])
        d["label_y"] = round(max(d["y"] + 4, col[-1]["label_y"] + gap if col else -1e9), 1)
        col.append(d)
    for col in columns.values():
        limit = bottom
        for d in reversed(col):
            d["label_y"] = round(min(d["label_y"], limit), 1)
            limit = d["label_y"] - gap


# --------------------------------------------------------------------------- heatmap


@dataclass
class Heatmap:
    points: list[str]
    blocks: list[int]
    cells: dict[str, dict[int, dict[str, Any]]]
    show_text: bool
    #: "excess" (calibrated: shaded by excess over the twin) or "error" (by max abs err / atol)
    mode: str = "error"
    budget: float | None = None
    #: (colour, label) swatches explaining the shading, in the order of the scale
    legend: list[tuple[str, str]] = field(default_factory=list)


def _mix(c0: str, c1: str, t: float) -> str:
    a = [int(c0[i:i + 2], 16) for i in (1, 3, 5)]
    b = [int(c1[i:i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(a, b))


def _clamp(t: float) -> float:
    return min(1.0, max(0.0, t))


def error_shade(err: float | None, atol: float | None, failed: bool) -> str:
    """Absolute reports: the error relative to the probe's atol, 1e-4*atol (pale) to atol (amber)."""
    if failed:
        return "#d62728"
    if not _finite(err) or not atol:
        return GREY
    if err == 0:
        return PALE
    return _mix(PALE, "#ffc107", _clamp((math.log10(err / atol) + 4) / 4))


def excess_shade(excess: float | None, budget: float, failed: bool) -> str:
    """Calibrated reports, log scale: up to x1 (as precise as the twin) pale, amber at the
    budget, red over it -- darker up to 1000 x the budget."""
    if excess is None or (isinstance(excess, float) and math.isnan(excess)):
        return "#d62728" if failed else GREY
    if excess > budget or failed:
        over = math.log10(excess / budget) / 3 if math.isfinite(excess) and excess > budget else 1.0
        return _mix(RED, DARK_RED, _clamp(over if excess > budget else 0.0))
    if excess <= 1:
        return PALE
    return _mix(PALE, AMBER, _clamp(math.log(excess) / math.log(budget)) if budget > 1 else 1.0)


def _legend(mode: str, budget: float | None) -> list[tuple[str, str]]:
    if mode == "excess":
        b = budget or FALLBACK_BUDGET
        steps = [(1.0, "≤ x1"), (b ** (1 / 3), xfmt(b ** (1 / 3))), (b ** (2 / 3), xfmt(b ** (2 / 3))), (b, xfmt(b))]
        over = [(b * 10, "> " + xfmt(b)), (b * 1000, xfmt(b * 1000))]
        return ([(excess_shade(v, b, False), label) for v, label in steps]
                + [(excess_shade(v, b, True), label) for v, label in over] + [(GREY, "not compared")])
    scale = [(1e-4, "1e-4·atol"), (1e-2, "1e-2·atol"), (1.0, "atol")]
    return [(error_shade(v, 1.0, False), label) for v, label in scale] + [(error_shade(2.0, 1.0, True), "over"),
                                                                           (GREY, "not compared")]


def _cell(r: ProbeRow, mode: str, budget: float | None) -> dict[str, Any]:
    if not r.compared:
        color = "#f5f5f5"
    elif mode == "excess":
        color = excess_shade(r.excess, budget or FALLBACK_BUDGET, r.passed is False)
    else:
        color = error_shade(r.max_abs_err, r.atol, r.passed is False)
    return {"name": r.name, "status": r.status, "err": r.max_abs_err, "atol": r.atol, "excess": r.excess,
            "twin": r.twin_max_abs_err, "isolated_excess": r.isolated_excess, "color": color}


def heatmap(report: ReportData) -> Heatmap:
    rows = [r for r in report.probes if r.block is not None]
    blocks = sorted({r.block for r in rows})
    points = [p for p in canon.BLOCK_POINTS if any(point_of(r) == p for r in rows)]
    mode = "excess" if calibrated(report) else "error"
    budget = budget_of(report) if mode == "excess" else None
    cells: dict[str, dict[int, dict[str, Any]]] = {p: {} for p in points}
    for r in rows:
        cells[point_of(r)][r.block] = _cell(r, mode, budget)
    return Heatmap(points, blocks, cells, show_text=len(blocks) <= 12, mode=mode, budget=budget,
                   legend=_legend(mode, budget))

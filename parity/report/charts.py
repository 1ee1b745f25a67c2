"""Geometry for the HTML report's inline SVG charts (pure Python, no JS library). These functions
only place numbers already in ReportData (or a RunDiff) on axes; they compute no statistics. The
templates draw the shapes they describe.

Calibrated reports (schema 1.1) carry, per probe, the precision twin's error (the reference run in
the candidate's dtype) and the candidate's *excess* over it: the error charts draw the twin's error
as a dashed line of the same colour, the excess chart draws the excess with the budget as its
limit, and the heatmap shades cells by excess (a quantized run under a budget verdict: by nrmse
against that budget). Generation reports get the same charts per decode step; `parity diff`
overlays run A and run B along depth.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from parity.capture import probes as canon
from parity.errors import ProbeError
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
#: heatmap colours: pale (no error / within the twin) -> green (half the limit) -> yellow ->
#: amber (approaching the limit) -> red (over it) -> dark red (far over it)
PALE, GREEN, YELLOW, AMBER = "#f1f8f1", "#b5dcb7", "#fff1b8", "#ffc83d"
RED, DARK_RED, GREY, FAIL = "#e05252", "#8e0d0d", "#9e9e9e", "#cf222e"
#: `parity diff`: run A and run B
RUN_COLORS = {"A": "#e8871e", "B": "#1f6feb"}
#: SVG text of the charts: 11px; an estimate of a label's width, for keeping labels apart
CHAR_W = 6.4


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
    dashed: bool = False


@dataclass
class Mark:
    """A vertical marker at one x (a generation's first divergent step, its first flip)."""

    x: float
    label: str
    color: str = FAIL
    anchor: str = "start"


@dataclass
class DepthChart:
    width: int
    height: int
    left: int
    top: int
    plot_w: int
    plot_h: int
    xticks: list[tuple[float, str, str, int]]  # x, label, text-anchor, baseline below the plot
    yticks: list[tuple[float, str]]
    series: list[Series]
    extras: list[dict[str, Any]]
    #: horizontal lines: {y, label, limit (red dashed; else a grey dotted guide), label_y (right margin)}
    lines: list[dict[str, Any]]
    metric: str
    ylabel: str = ""
    xlabel: str = "block"
    twin: bool = False
    empty: bool = False
    zero: bool = False  # empty because every value is exactly 0 (identical to the reference)
    marks: list[Mark] = field(default_factory=list)
    vgrid: bool = False  # faint vertical lines at the x ticks


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

    @property
    def slot_w(self) -> float:
        return self.plot_w / self.slots

    def x(self, slot: float) -> float:
        return round(self.left + self.plot_w * (slot + 0.5) / self.slots, 1)

    def y(self, v: float) -> float:
        lv = math.log10(v) if v > 0 else self.lo
        return round(self.top + self.plot_h * (self.hi - lv) / (self.hi - self.lo), 1)


_MARGIN = (62, 18, 78, 34)  # left, top (the markers' labels), right (lines' and tail probes' labels), bottom


def _axes(values: Sequence[float], slots: int, width: int, height: int) -> _Axes | None:
    """Axes spanning ``values`` (zeros sit at the bottom); None when nothing is positive."""
    pos = [v for v in values if v > 0]
    if not pos:
        return None
    left, top, right, bottom = _MARGIN
    lo = math.floor(math.log10(min(pos)) - 0.05) - (1 if 0.0 in values else 0)  # no point on the frame
    hi = max(math.ceil(math.log10(max(pos)) + 0.05), lo + 1)
    return _Axes(left, top, width - left - right, height - top - bottom, max(slots, 1), lo, hi)


def _empty(metric: str, width: int, height: int, ylabel: str, xlabel: str = "block", values: Sequence[float] = ()) -> DepthChart:
    left, top, right, bottom = _MARGIN
    return DepthChart(width, height, left, top, width - left - right, height - top - bottom, [], [], [], [], [],
                      metric, ylabel, xlabel, empty=True, zero=bool(values) and all(v == 0 for v in values))


def _get(row: Any, attr: str | None) -> float | None:
    v = (row.get(attr) if isinstance(row, dict) else getattr(row, attr)) if attr else None
    return v if _finite(v) else None


def _path(coords: Sequence[tuple[float, float] | None]) -> str:
    """A polyline; None breaks it (a gap where a value is missing)."""
    out, move = [], True
    for c in coords:
        if c is None:
            move = True
            continue
        out.append(("M" if move else "L") + f"{c[0]},{c[1]}")
        move = False
    return " ".join(out)


def _tw(label: str) -> float:
    return CHAR_W * len(label)


def _ticks(ax: _Axes, labels: Sequence[tuple[float, str]], ends: Sequence[tuple[float, str]] = ()) -> list[tuple[float, str, str, int]]:
    """Ticks (x, label, text-anchor, baseline below the plot) at (slot, label), at a regular stride
    wide enough for the labels, minus any that would touch an end label (head, tail)."""
    out: list[tuple[float, str, str, int]] = []
    for slot, label in ends:  # under its slot; where too wide for it, a row lower, from the plot's edge
        if _tw(label) + 4 <= ax.slot_w:
            out.append((ax.x(slot), label, "middle", 15))
        else:
            out.append((ax.left + 1, label, "start", 30) if slot == 0 else (ax.left + ax.plot_w - 1, label, "end", 30))
    widest = max((_tw(lb) for _, lb in labels), default=0.0)
    gap = min((b[0] - a[0] for a, b in itertools.pairwise(labels)), default=1) * ax.slot_w
    stride = next(s for s in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 10**9) if s * gap >= widest + 10)

    def span(x: float, label: str, anchor: str) -> tuple[float, float]:
        w = _tw(label)
        return (x - w / 2, x + w / 2) if anchor == "middle" else (x - w, x) if anchor == "end" else (x, x + w)

    taken = [span(*t[:3]) for t in out if t[3] == 15]
    for i, (slot, label) in enumerate(labels):
        if i % stride:
            continue
        a, b = span(ax.x(slot), label, "middle")
        if all(b + 4 <= a0 or a >= b0 + 4 for a0, b0 in taken):
            out.append((ax.x(slot), label, "middle", 15))
    return out


def _tip(row: ProbeRow, metric: str, twin: str | None, show: Callable[[Any], str]) -> str:
    """A point's tooltip: its value, the twin's beside it."""
    text = f"{row.name}: {show(getattr(row, metric))}"
    if twin and getattr(row, twin) is not None:
        text += f" (twin {show(getattr(row, twin))})"
    if metric == "excess" and row.isolated_excess is not None:
        text += f", isolated {xfmt(row.isolated_excess)}"
    return text


def _series(rows: list[ProbeRow], metric: str, twin: str | None, ax: _Axes) -> list[Series]:
    """One line per block point (the twin's beside it), in execution order."""
    show = (xfmt if metric == "excess" else fmt)
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
    show = (xfmt if metric == "excess" else fmt)
    out = []
    for r in rows:
        if r.block is None and _get(r, metric) is not None:
            slot = 0 if r.name in canon.HEAD_PROBES else nb + 1
            tv = _get(r, twin)
            out.append({"x": ax.x(slot), "y": ax.y(getattr(r, metric)), "name": r.name, "value": getattr(r, metric),
                        "fail": r.passed is False, "tip": _tip(r, metric, twin, show), "label_x": ax.x(slot) + 6,
                        "twin_y": None if tv is None else ax.y(tv)})
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


def _lines(ax: _Axes, specs: Sequence[tuple[float, str, bool]]) -> list[dict[str, Any]]:
    return sorted(({"y": ax.y(v), "label": label, "limit": limit} for v, label, limit in specs), key=lambda ln: ln["y"])


def _spread(labels: list[dict[str, Any]], lo: float, hi: float, gap: float = 13.0) -> None:
    """Move labels (baselines at label_y, first level with their mark) apart, at least ``gap``
    between two, within [lo, hi]."""
    labels = sorted(labels, key=lambda d: d["y"])
    prev = -math.inf
    for d in labels:
        d["label_y"] = prev = round(max(d["y"] + 4, prev + gap, lo), 1)
    for d in reversed(labels):
        d["label_y"] = hi = round(min(d["label_y"], hi), 1)
        hi -= gap


def _place_labels(ax: _Axes, extras: list[dict[str, Any]], lines: list[dict[str, Any]]) -> None:
    """Head probes' labels right of their squares; tail probes' labels and the lines' labels share
    the right margin: all kept apart, inside the plot's height (off the x axis' labels)."""
    head = [d for d in extras if d["x"] == ax.x(0)]
    _spread(head, ax.top + 9, ax.top + ax.plot_h - 2)
    _spread([d for d in extras if d not in head] + lines, ax.top + 9, ax.top + ax.plot_h + 12)


def _twin_metric(rows: list[Any], metric: str) -> str | None:
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
        return _empty(metric, width, height, _ylabel(metric), values=vals)
    xticks = _ticks(ax, [(b + 1, str(b)) for b in range(nb)], [(0, "head"), (nb + 1, "tail")])
    lines = _lines(ax, limits)
    extras = _extras(rows, metric, twin, ax, nb)
    _place_labels(ax, extras, lines)
    return DepthChart(width, height, ax.left, ax.top, ax.plot_w, ax.plot_h, xticks, _yticks(ax, metric),
                      _series(rows, metric, twin, ax), extras, lines, metric, _ylabel(metric), twin=twin is not None)


# --------------------------------------------------------------------------- generation: per decode step


def step_chart(gen: dict[str, Any] | None, metric: str = "excess", width: int = 820, height: int = 220) -> DepthChart | None:
    """The logits' ``metric`` (max_abs_err, with the twin's dashed; or excess, with the budget) per
    decode step; the first divergent step and the first token flip marked. None: no step has it."""
    gen = gen or {}
    steps = [s for s in gen.get("steps", []) if s.get("comparable") and _get(s, metric) is not None]
    if not steps:
        return None
    calib = gen.get("tolerance") == "calibrated" or any(_finite(s.get("excess")) for s in steps)
    budget = float(gen["budget"]) if _finite(gen.get("budget")) and gen["budget"] > 0 else FALLBACK_BUDGET
    twin = _twin_metric(steps, metric)
    limits: list[tuple[float, str, bool]] = []
    if metric == "excess":
        limits = [(1.0, "twin x1", False), (budget, f"budget {xfmt(budget)}", True)]
    elif metric == "max_abs_err" and not calib and _finite((gen.get("logits_tolerance") or {}).get("atol")):
        atol = gen["logits_tolerance"]["atol"]
        limits = [(atol, f"atol {atol:g}", True)] if atol > 0 else []
    n = max(s["step"] for s in gen["steps"]) + 1
    vals = [v for s in steps for v in (_get(s, metric), _get(s, twin)) if v is not None]
    ax = _axes(vals + [v for v, _, _ in limits], n, width, height)
    if ax is None:
        return _empty(metric, width, height, _ylabel(metric), "step", values=vals)
    show = (xfmt if metric == "excess" else fmt)
    at = {s["step"]: s for s in steps}
    coords = [(ax.x(i), ax.y(at[i][metric])) if i in at else None for i in range(n)]
    dots = [{"x": ax.x(s["step"]), "y": ax.y(s[metric]), "name": None, "step": s["step"], "value": s[metric],
             "fail": s.get("passed") is False,
             "tip": f"step {s['step']}: {metric} {show(s[metric])}"
                    + (f" (twin {show(s.get(twin))})" if twin and s.get(twin) is not None else "")
                    + ("" if metric == "max_abs_err" else f", max abs err {fmt(s.get('max_abs_err'), 3)}")}
            for s in steps]
    tw = [(ax.x(i), ax.y(at[i][twin])) if i in at and _finite(at[i].get(twin)) else None for i in range(n)] if twin else []
    series = [Series("logits", PALETTE["attn_out"], _path(coords), dots, True, _path(tw) if twin else None)]
    lines = _lines(ax, limits)
    _place_labels(ax, [], lines)
    return DepthChart(width, height, ax.left, ax.top, ax.plot_w, ax.plot_h, _ticks(ax, [(i, str(i)) for i in range(n)]),
                      _yticks(ax, metric), series, [], lines, metric, _ylabel(metric), xlabel="decode step",
                      twin=twin is not None, marks=_step_marks(gen, ax))


def _step_marks(gen: dict[str, Any], ax: _Axes) -> list[Mark]:
    first, flip = gen.get("first_divergent_step"), gen.get("first_token_flip_step")
    marks = []
    if isinstance(first, int):
        marks.append(Mark(ax.x(first), "first divergence" + (" + flip" if flip == first else "")))
    if isinstance(flip, int) and flip != first:
        marks.append(Mark(ax.x(flip), "first token flip", "#9a6700"))
    for m in marks:  # labels run right of the marker; left of it near the right edge
        if m.x + _tw(m.label) + 4 > ax.left + ax.plot_w:
            m.anchor = "end"
    return marks


# --------------------------------------------------------------------------- parity diff: A and B along depth


def diff_chart(diff: Any, metric: str = "excess", width: int = 820, height: int = 280) -> DepthChart | None:
    """Run A's and run B's ``metric`` (excess: err_/excess_ fields of each row) on one chart, probe
    by probe in execution order (block numbers where each block starts); failing probes red.
    None: neither run has the metric."""
    key = {"excess": "excess", "max_abs_err": "err"}[metric]
    rows = diff.rows
    vals = [v for r in rows for s in "ab" if (v := _get(r, f"{key}_{s}")) is not None]
    budgets = {b for b in (diff.budget_a, diff.budget_b) if _finite(b)} if metric == "excess" else set()
    specs = [(1.0, "twin x1", False)] if metric == "excess" else []
    specs += [(b, f"budget {xfmt(b)}", True) for b in sorted(budgets)]
    ax = _axes(vals + [v for v, _, _ in specs], len(rows), width, height) if vals else None
    if ax is None:
        return None
    show = (xfmt if metric == "excess" else fmt)
    series = []
    for side in "BA":  # A dashed on top of B: both show where they coincide
        s = side.lower()
        coords = [(ax.x(i), ax.y(v)) if (v := _get(r, f"{key}_{s}")) is not None else None for i, r in enumerate(rows)]
        dots = [{"x": c[0], "y": c[1], "name": r.name, "fail": getattr(r, f"status_{s}") == "fail", "value": None,
                 "tip": f"{r.name}: run {side} {show(getattr(r, f'{key}_{s}'))} ({getattr(r, f'status_{s}')})"}
                for c, r in zip(coords, rows) if c is not None]
        series.append(Series(f"run {side}", RUN_COLORS[side], _path(coords), dots, True, dashed=side == "A"))
    starts: list[tuple[float, str]] = []
    for i, r in enumerate(rows):
        try:
            block = canon.parse(r.name).block
        except ProbeError:
            continue
        if block is not None and (not starts or starts[-1][1] != str(block)):
            starts.append((i, str(block)))
    lines = _lines(ax, specs)
    _place_labels(ax, [], lines)
    return DepthChart(width, height, ax.left, ax.top, ax.plot_w, ax.plot_h, _ticks(ax, starts), _yticks(ax, metric),
                      series, [], lines, metric, _ylabel(metric), xlabel="probe, in execution order (ticks: where each block starts)",
                      vgrid=True)


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


def _within(frac: float, pale: float) -> str:
    """A value at ``frac`` of its limit (0 < frac <= 1), log scale: pale at ``pale`` or less, green
    up to half the limit (comfortably within it), yellow to amber approaching it."""
    if frac <= 0.5:
        return _mix(PALE, GREEN, _clamp(math.log(frac / pale) / math.log(0.5 / pale)) if frac > pale else 0.0)
    return _mix(YELLOW, AMBER, _clamp(math.log(frac / 0.5) / math.log(2)))


def error_shade(err: float | None, atol: float | None, failed: bool) -> str:
    """Absolute reports: the error relative to the probe's atol (pale at 1e-4·atol, green to half
    of it, amber approaching it, red over it)."""
    if failed:
        return FAIL
    if not _finite(err) or not atol:
        return GREY
    return PALE if err == 0 else _within(err / atol, 1e-4)


def excess_shade(excess: float | None, budget: float, failed: bool) -> str:
    """Calibrated reports, log scale: up to x1 (as precise as the twin) pale, green up to half the
    budget, amber approaching it, red over it -- darker up to 1000 x the budget."""
    if excess is None or (isinstance(excess, float) and math.isnan(excess)):
        return FAIL if failed else GREY
    if excess > budget or failed:
        over = math.log10(excess / budget) / 3 if math.isfinite(excess) and excess > budget else 1.0
        return _mix(RED, DARK_RED, _clamp(over if excess > budget else 0.0))
    if excess <= 1 or budget <= 1:
        return PALE if excess <= 1 else AMBER
    return _within(excess / budget, 1 / budget)


def _legend(mode: str, budget: float | None) -> list[tuple[str, str]]:
    if mode == "excess":
        b = budget or FALLBACK_BUDGET
        steps = [(1.0, "≤ x1"), (b / 2, xfmt(b / 2)), (b * 0.75, xfmt(b * 0.75)), (b, xfmt(b) + " budget")]
        over = [(b * 10, "> " + xfmt(b)), (b * 1000, xfmt(b * 1000))]
        return ([(excess_shade(v, b, False), label) for v, label in steps]
                + [(excess_shade(v, b, True), label) for v, label in over] + [(GREY, "not compared")])
    u = f"budget {budget:g}" if mode == "nrmse" else "atol"  # nrmse: a quantized run's scheme budget
    scale = [(1e-4, f"1e-4·{u}"), (0.5, f"0.5·{u}"), (0.75, f"0.75·{u}"), (1.0, u)]
    return [(error_shade(v, 1.0, False), label) for v, label in scale] + [(error_shade(2.0, 1.0, True), "over"),
                                                                           (GREY, "not compared")]


def _cell(r: ProbeRow, mode: str, budget: float | None) -> dict[str, Any]:
    if not r.compared:
        color = "#f5f5f5"
    elif mode == "excess":
        color = excess_shade(r.excess, budget or FALLBACK_BUDGET, r.passed is False)
    else:  # nrmse: a quantized run's rows against the scheme's budget
        color = error_shade(*((r.nrmse, budget) if mode == "nrmse" else (r.max_abs_err, r.atol)), r.passed is False)
    return {"name": r.name, "status": r.status, "err": r.max_abs_err, "atol": r.atol, "excess": r.excess, "nrmse": r.nrmse,
            "twin": r.twin_max_abs_err, "isolated_excess": r.isolated_excess, "color": color}


def heatmap(report: ReportData) -> Heatmap:
    rows = [r for r in report.probes if r.block is not None]
    blocks = sorted({r.block for r in rows})
    points = [p for p in canon.BLOCK_POINTS if any(point_of(r) == p for r in rows)]
    mode = "excess" if calibrated(report) else "error"
    budget = budget_of(report) if mode == "excess" else None
    if (q := report.summary.get("quant") or {}).get("mode") == "budget" and _finite(q.get("budget")):
        mode, budget = "nrmse", float(q["budget"])  # a quantized run: rows judged by nrmse against its budget
    cells: dict[str, dict[int, dict[str, Any]]] = {p: {} for p in points}
    for r in rows:
        cells[point_of(r)][r.block] = _cell(r, mode, budget)
    return Heatmap(points, blocks, cells, show_text=len(blocks) <= 12, mode=mode, budget=budget,
                   legend=_legend(mode, budget))

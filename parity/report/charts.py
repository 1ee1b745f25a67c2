"""Geometry for the HTML report's inline SVG charts (pure Python, no JS library).

These functions only place numbers already in ReportData on axes; they compute no
statistics. The template draws the shapes they describe.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from parity import probes as canon
from parity.report.data import ProbeRow, ReportData

PALETTE = {
    "attn_in": "#7f8c8d", "attn.q": "#b39ddb", "attn.k": "#9575cd", "attn.v": "#7e57c2",
    "attn.q_rot": "#4dd0e1", "attn.k_rot": "#26a69a", "attn_out": "#1f77b4", "resid_mid": "#8c564b",
    "mlp_in": "#bcbd22", "mlp_out": "#ff7f0e", "resid_post": "#2ca02c",
}
#: lines drawn by default; the other points start hidden (legend toggles them)
PRIMARY = ("attn_out", "mlp_out", "resid_post")


def point_of(row: ProbeRow) -> str:
    return row.name.split(".", 2)[2] if row.block is not None else row.name


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@dataclass
class Series:
    point: str
    color: str
    path: str
    dots: list[dict[str, Any]] = field(default_factory=list)
    primary: bool = False


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
    tolerance: tuple[float, str] | None
    metric: str
    empty: bool = False


def _values(rows: list[ProbeRow], metric: str) -> list[float]:
    return [getattr(r, metric) for r in rows if r.compared and _finite(getattr(r, metric))]


def depth_chart(report: ReportData, metric: str = "max_abs_err", width: int = 820, height: int = 300) -> DepthChart:
    """Error (log scale) against depth: one line per block point, head/tail probes as dots."""
    rows = [r for r in report.probes if r.compared]
    blocks = sorted({r.block for r in rows if r.block is not None})
    nb = int(report.run.get("num_blocks") or (blocks[-1] + 1 if blocks else 0))
    left, top, right, bottom = 62, 14, 16, 34
    pw, ph = width - left - right, height - top - bottom
    vals = _values(rows, metric)
    default_atol = ((report.run.get("tolerances") or {}).get("default") or {}).get("atol")
    pos = [v for v in vals if v > 0] + ([default_atol] if metric == "max_abs_err" and default_atol else [])
    if not pos:
        return DepthChart(width, height, left, top, pw, ph, [], [], [], [], None, metric, empty=True)
    lo = math.floor(math.log10(min(pos))) - (1 if 0.0 in vals else 0)
    hi = max(math.ceil(math.log10(max(pos))), lo + 1)
    slots = nb + 2  # embed | blocks 0..nb-1 | tail

    def x(slot: float) -> float:
        return round(left + pw * (slot + 0.5) / slots, 1)

    def y(v: float) -> float:
        lv = math.log10(v) if v > 0 else lo
        return round(top + ph * (hi - lv) / (hi - lo), 1)

    series: list[Series] = []
    for point in canon.BLOCK_POINTS:
        pts = sorted((r.block, r) for r in rows if r.block is not None and point_of(r) == point and _finite(getattr(r, metric)))
        if not pts:
            continue
        coords = [(x(b + 1), y(getattr(r, metric))) for b, r in pts]
        path = "M" + " L".join(f"{cx},{cy}" for cx, cy in coords)
        dots = [{"x": cx, "y": cy, "name": r.name, "value": getattr(r, metric), "fail": r.passed is False}
                for (cx, cy), (_, r) in zip(coords, pts)]
        series.append(Series(point, PALETTE.get(point, "#555"), path, dots, point in PRIMARY))
    extras = []
    for r in rows:
        if r.block is None and _finite(getattr(r, metric)):
            slot = 0 if r.name in canon.HEAD_PROBES else nb + 1
            extras.append({"x": x(slot), "y": y(getattr(r, metric)), "name": r.name,
                           "value": getattr(r, metric), "fail": r.passed is False})
    _spread_labels(extras)
    step = max(1, math.ceil(nb / 16))
    xticks = [(x(0), "head")] + [(x(b + 1), str(b)) for b in range(0, nb, step)] + [(x(nb + 1), "tail")]
    yticks = [(y(10.0**e), f"1e{e}") for e in range(lo, hi + 1)]
    tol = (y(default_atol), f"atol {default_atol:g}") if metric == "max_abs_err" and default_atol else None
    return DepthChart(width, height, left, top, pw, ph, xticks, yticks, series, extras, tol, metric)


def _spread_labels(extras: list[dict[str, Any]], gap: float = 11.0) -> None:
    """Labels of dots in the same column move apart so they do not overlap."""
    last: dict[float, float] = {}
    for d in sorted(extras, key=lambda e: (e["x"], e["y"])):
        want = d["y"] + 4
        d["label_y"] = round(max(want, last.get(d["x"], -1e9) + gap), 1)
        last[d["x"]] = d["label_y"]


@dataclass
class Heatmap:
    points: list[str]
    blocks: list[int]
    cells: dict[str, dict[int, dict[str, Any]]]
    show_text: bool


def _shade(row: ProbeRow) -> str:
    """Cell colour from the error relative to the probe's atol (display only)."""
    if row.passed is False:
        return "#d62728"
    err, atol = row.max_abs_err, row.atol
    if not _finite(err) or not atol:
        return "#9e9e9e"
    if err == 0:
        return "#e8f5e9"
    t = min(1.0, max(0.0, (math.log10(err / atol) + 4) / 4))  # 1e-4*atol .. atol
    r, g, b = (int(232 + (255 - 232) * t), int(245 - (245 - 193) * t), int(233 - (233 - 7) * t))
    return f"#{r:02x}{g:02x}{b:02x}"


def heatmap(report: ReportData) -> Heatmap:
    rows = [r for r in report.probes if r.block is not None]
    blocks = sorted({r.block for r in rows})
    points = [p for p in canon.BLOCK_POINTS if any(point_of(r) == p for r in rows)]
    cells: dict[str, dict[int, dict[str, Any]]] = {p: {} for p in points}
    for r in rows:
        cells[point_of(r)][r.block] = {"name": r.name, "status": r.status, "err": r.max_abs_err,
                                        "atol": r.atol, "color": _shade(r) if r.compared else "#f5f5f5"}
    return Heatmap(points, blocks, cells, show_text=len(blocks) <= 12)

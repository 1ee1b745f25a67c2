"""HTML renderer: one self-contained page (styles and scripts inline, no network).

Reads ReportData only (DESIGN.md: renderers never recompute). Jinja2 with autoescape
writes the markup; the report itself goes into the page as JSON inside
``<script type="application/json">``, escaped so no string can end that element.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from parity.errors import UsageError
from parity.report import charts
from parity.report.console import calibrated, xfmt
from parity.report.console import fmt as console_fmt
from parity.report.data import ReportData
from parity.report.files import atomic_write

_TEMPLATES = Path(__file__).with_name("templates")


def _env() -> Any:
    try:
        import jinja2
    except ImportError:
        raise UsageError("HTML reports need jinja2, which is not installed.",
                         note="pip install 'parity-debugger[html]'") from None
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_TEMPLATES)),
        autoescape=jinja2.select_autoescape(("html", "j2"), default=True),
        undefined=jinja2.ChainableUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["g"] = fmt
    env.filters["num"] = sort_key
    env.filters["x"] = xfmt
    env.filters["pyjson"] = lambda x: json.dumps(x, default=str)
    return env


def fmt(x: Any, digits: int = 4) -> str:
    """Numbers as in the console: 4 significant digits, '-' for missing."""
    if isinstance(x, bool):
        return str(x).lower()
    return console_fmt(x, digits)


def sort_key(x: Any) -> str:
    """A data-v attribute for numeric sorting ('' sorts last)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, float) and math.isinf(x):
        return "1e308" if x > 0 else "-1e308"
    return repr(x) if isinstance(x, (int, float)) else ""


def script_json(data: Any) -> str:
    """JSON safe inside a <script> element: no '<', '>', '&' or JS line separators left."""
    text = json.dumps(data, allow_nan=False, separators=(",", ":"))
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def render(report: ReportData) -> str:
    env = _env()
    calib = calibrated(report)
    return env.get_template("report.html.j2").render(
        r=report, run=report.run, s=report.summary, calib=calib, verdict=verdict_view(report),
        charts={m: charts.depth_chart(report, m) for m in ("max_abs_err", "nrmse")},
        excess_chart=charts.depth_chart(report, "excess", height=230) if calib else None,
        heat=charts.heatmap(report), point_of=charts.point_of,
        generation=generation_view(report.generation),
        data_json=script_json(report.to_dict()),
    )


def verdict_view(report: ReportData) -> dict[str, Any]:
    """How the report's probes were judged: mode, budget, floor and twin (calibrated) as the
    run states them; schema 1.0 reports (no ``run.verdict``) are absolute."""
    v = dict(report.run.get("verdict") or {})
    v["mode"] = "calibrated" if calibrated(report) else "absolute"
    if v["mode"] == "calibrated":
        v["budget"] = charts.budget_of(report)
    return v


#: step columns placed right after max_abs_err, in this order, where present (calibrated runs)
_AFTER_MAX_ABS = ("excess", "twin_max_abs_err", "nrmse", "twin_nrmse")


def generation_view(gen: dict[str, Any] | None) -> dict[str, Any] | None:
    """Generic view of ``report.generation``: scalar facts, plus each list of records as a
    table (a step's excess written as x1.3), and the excess per step as a chart when present."""
    if not gen:
        return None
    facts, tables = [], []
    for key, val in gen.items():
        if isinstance(val, list) and val and all(isinstance(v, dict) for v in val):
            cols = _columns(val)
            tables.append({"name": key, "cols": cols,
                           "rows": [[_cell(v.get(c), c) for c in cols] for v in val]})
        else:
            facts.append((key, _cell(val)))
    return {"facts": facts, "tables": tables, "chart": charts.step_chart(gen)}


def _columns(records: list[dict[str, Any]]) -> list[str]:
    """Every key of the records, in first-seen order; a step's excess and the twin's error
    next to its max_abs_err."""
    cols: list[str] = []
    for v in records:
        cols += [k for k in v if k not in cols]
    if "max_abs_err" not in cols:
        return cols
    moved = [c for c in _AFTER_MAX_ABS if c in cols]
    rest = [c for c in cols if c not in moved]
    at = rest.index("max_abs_err") + 1
    return rest[:at] + moved + rest[at:]


def _cell(v: Any, key: str = "") -> str:
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)
    if key == "excess" and isinstance(v, (int, float)) and not isinstance(v, bool):
        return xfmt(v)
    return fmt(v)


def write(report: ReportData, path: str | Path) -> Path:
    path = Path(path)
    atomic_write(path, render(report))
    return path


def render_diff(diff: Any) -> str:
    env = _env()
    return env.get_template("diff.html.j2").render(d=diff, data_json=script_json(diff.to_dict()))


def write_diff(diff: Any, path: str | Path) -> Path:
    path = Path(path)
    atomic_write(path, render_diff(diff))
    return path

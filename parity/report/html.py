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
    return env.get_template("report.html.j2").render(
        r=report, run=report.run, s=report.summary,
        charts={m: charts.depth_chart(report, m) for m in ("max_abs_err", "nrmse")},
        heat=charts.heatmap(report), point_of=charts.point_of,
        generation=generation_view(report.generation),
        data_json=script_json(report.to_dict()),
    )


def generation_view(gen: dict[str, Any] | None) -> dict[str, Any] | None:
    """Generic view of ``report.generation``: scalar facts, plus each list of records as a table."""
    if not gen:
        return None
    facts, tables = [], []
    for key, val in gen.items():
        if isinstance(val, list) and val and all(isinstance(v, dict) for v in val):
            cols: list[str] = []
            for v in val:
                cols += [k for k in v if k not in cols]
            tables.append({"name": key, "cols": cols, "rows": [[_cell(v.get(c)) for c in cols] for v in val]})
        else:
            facts.append((key, _cell(val)))
    return {"facts": facts, "tables": tables}


def _cell(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)
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

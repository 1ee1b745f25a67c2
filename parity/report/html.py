"""HTML renderer: one self-contained page (styles and scripts inline, no network).

Reads ReportData only: renderers never recompute. Jinja2 with autoescape
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
from parity.report.generation import calibrated as gen_calibrated

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
    env.filters["show"] = show
    env.filters["brk"] = brk
    return env


def show(v: Any) -> Any:
    """A config or fact value, readable: lists comma-separated, mappings as key=value, '-' for
    none; escaped, with line-break chances in long names and paths (see ``brk``)."""
    return brk(_plain(v))


def _plain(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}={_plain(x)}" for k, x in v.items()) or "{}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_plain(x) for x in v) if v else "[]"
    return fmt(v)


def brk(text: Any) -> Any:
    """Escaped text where a long dotted name or path may wrap after '.', '/' or '_' (a <wbr>), so
    that no number is ever split: numbers and short strings are left whole."""
    from markupsafe import Markup, escape

    text = "" if text is None else str(text)
    out = escape(text)
    if len(text) > 24:
        for ch in "./_":
            out = out.replace(ch, ch + Markup("<wbr>"))
    return Markup(out)


def badge(verdict: str | None) -> dict[str, str]:
    """The header's badge: the same words for forward runs and generation (PASS / DIVERGED)."""
    if verdict == "pass":
        return {"text": "PASS", "cls": "pass"}
    if verdict in ("diverged", "fail"):
        return {"text": "DIVERGED", "cls": "fail"}
    return {"text": str(verdict or "?").upper(), "cls": "fail"}


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


def is_generation(report: ReportData) -> bool:
    """A `parity generate` report (decode steps, no forward probes): it gets its own page."""
    return bool(report.generation) and (report.run.get("command") == "generate" or not report.probes)


def render(report: ReportData) -> str:
    env = _env()
    if is_generation(report):
        verdict = {**verdict_view(report), "twin_text": report.generation.get("twin")}
        return env.get_template("generation.html.j2").render(
            r=report, run=report.run, s=report.summary, verdict=verdict,
            badge=badge(report.summary.get("verdict")), g=generation_page(report), data_json=script_json(report.to_dict()))
    calib = calibrated(report)
    return env.get_template("report.html.j2").render(
        r=report, run=report.run, s=report.summary, calib=calib, verdict=verdict_view(report),
        badge=badge(report.summary.get("verdict")),
        charts={m: charts.depth_chart(report, m) for m in ("max_abs_err", "nrmse")},
        excess_chart=charts.depth_chart(report, "excess", height=230) if calib else None,
        heat=charts.heatmap(report), point_of=charts.point_of,
        generation=generation_view(report.generation), quant=quant_view(report.summary.get("quant")),
        data_json=script_json(report.to_dict()),
    )


def quant_view(q: Any) -> Any:
    from parity.report import bars

    return bars.view(q)


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


# --------------------------------------------------------------------------- the generation page


#: a step's fields the page shows (a step one side did not reach lacks the statistics)
_STEP_KEYS = ("step", "position", "ref_token", "cand_token", "match", "comparable", "passed", "max_abs_err",
              "mean_abs_err", "cosine", "ref_margin", "gap", "flip", "topk_overlap", "excess", "twin_max_abs_err",
              "nrmse", "twin_nrmse")


def _status(row: dict[str, Any]) -> tuple[str, str]:
    """A step's status as the console's generation table words it, and its row class."""
    if not row.get("comparable"):
        return "not compared", "na"
    if row.get("flip") == "confident":
        return "CONFIDENT FLIP", "fail"
    if row.get("passed") is False:
        return "FAIL", "fail"
    if row.get("flip") == "near-tie":
        return "near-tie flip", "warn"
    return "PASS", "pass"


def generation_page(report: ReportData) -> dict[str, Any]:
    """What the generation page shows, read off ``report.generation``: the step charts, both
    token streams, the step table, the stop sets, sampling settings, prompt and configs."""
    gen = report.generation or {}
    names = {int(v): k for k, v in (gen.get("special_tokens") or {}).items()}

    def tok(t: Any) -> str:
        return "-" if t is None else f"{t} {names[t]}" if t in names else str(t)

    steps = gen.get("steps") or []
    first, flip = gen.get("first_divergent_step"), gen.get("first_token_flip_step")
    teacher = gen.get("mode") == "teacher-forced"
    rows = []
    for r in steps:
        status, cls = _status(r)
        rows.append({**dict.fromkeys(_STEP_KEYS), **r, "ref": tok(r.get("ref_token")), "cand": tok(r.get("cand_token")), "status": status,
                     "cls": cls, "first": r.get("step") == first, "flip_first": r.get("step") == flip})
    ref, cand = gen.get("reference") or {}, gen.get("candidate") or {}
    texts = [("reference", ref.get("text"), ref.get("tokens"), ref.get("ended_by"))]
    texts.append(("candidate's choices (fed the reference's tokens)", cand.get("predicted_text"), cand.get("predicted"),
                  "teacher-forced") if teacher else ("candidate", cand.get("text"), cand.get("tokens"), cand.get("ended_by")))
    compared = [r for r in rows if r.get("comparable")]
    return {
        "mode": gen.get("mode"), "teacher": teacher, "calibrated": gen_calibrated(gen), "budget": gen.get("budget"),
        "first": rows[first] if isinstance(first, int) and first < len(rows) else None,
        "flip": rows[flip] if isinstance(flip, int) and flip < len(rows) else None,
        "counts": {"steps": len(rows), "compared": len(compared), "failing": sum(r["cls"] == "fail" for r in compared),
                   "flips": sum(1 for r in compared if r.get("flip")), "not compared": len(rows) - len(compared)},
        "charts": [c for c in (charts.step_chart(gen, "max_abs_err"), charts.step_chart(gen, "excess")) if c],
        "rows": rows, "chunks": [rows[i:i + 16] for i in range(0, len(rows), 16)],
        "texts": [{"label": lb, "text": t, "ended_by": e, "decoded": t is not None and t.strip() != str(ids)}
                  for lb, t, ids, e in texts],
        "stops": {"reference": ref.get("stop_tokens") or [], "candidate": cand.get("stop_tokens") or [],
                  "diff": gen.get("stop_set_diff"), "ended_by": (ref.get("ended_by"), cand.get("ended_by"))},
        "overrun": gen.get("overrun"), "sampling": gen.get("sampling_diff") or [],
        "prompt": gen.get("prompt") or {},
        "configs": (ref.get("config") or {}, cand.get("config") or {}),
        "sources": (ref.get("source"), cand.get("source")),
        "settings": [(k, _plain(gen[k])) for k in ("mode", "greedy", "max_new_tokens", "overlap_k", "tolerance", "budget",
                                                 "twin", "logits_tolerance", "near_tie_factor", "faults", "fault_notes")
                     if k in gen and gen[k] not in (None, [], "")],
        "specials": [(tok(i), n) for i, n in sorted(names.items())],
        "hint": gen.get("hint"),
    }


def write(report: ReportData, path: str | Path) -> Path:
    path = Path(path)
    atomic_write(path, render(report))
    return path


def render_diff(diff: Any) -> str:
    env = _env()
    metrics = ("excess", "max_abs_err") if diff.has_excess else ("max_abs_err",)
    overlay = {m: c for m in metrics if (c := charts.diff_chart(diff, m)) is not None}
    return env.get_template("diff.html.j2").render(d=diff, charts=overlay, colors=charts.RUN_COLORS,
                                                   data_json=script_json(diff.to_dict()))


def write_diff(diff: Any, path: str | Path) -> Path:
    path = Path(path)
    atomic_write(path, render_diff(diff))
    return path

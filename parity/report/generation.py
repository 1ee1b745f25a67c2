"""Renderers of the generation section (``report.generation``): console table and steps CSV.

They read ReportData only and recompute nothing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from parity.report.console import fmt, xfmt
from parity.report.data import ReportData
from parity.report.files import atomic_write, rows_csv, to_json

STEP_COLUMNS = ("step", "position", "ref_token", "cand_token", "fed_token", "match", "comparable", "passed",
                "max_abs_err", "mean_abs_err", "cosine", "ref_margin", "gap", "flip", "topk_overlap",
                "excess", "twin_max_abs_err", "nrmse", "twin_nrmse")


def _status(row: dict[str, Any]) -> str:
    if not row["comparable"]:
        return "[dim]not compared[/dim]"
    if row["flip"] == "confident":
        return "[bold red]CONFIDENT FLIP[/bold red]"
    if not row["passed"]:
        return "[bold red]FAIL[/bold red]"
    if row["flip"] == "near-tie":
        return "[yellow]near-tie flip[/yellow]"
    return "[green]PASS[/green]"


def _tok(gen: dict[str, Any], tid: int | None) -> str:
    if tid is None:
        return "-"
    names = {int(v): k for k, v in gen.get("special_tokens", {}).items()}
    return f"{tid} {names[tid]}" if tid in names else str(tid)


def render(report: ReportData, console: Any = None) -> None:
    from parity.report import term

    console = console or term.make_console()
    gen, run = report.generation or {}, report.run
    cand = run.get("candidate", {})
    title = (f"parity generate: {run.get('model')} ({run.get('source')}) | reference {run['reference'].get('dtype')} "
             f"vs {cand.get('name')} {cand.get('dtype')} {cand.get('device')} | {gen['mode']} greedy | "
             f"prompt {gen['prompt']['tokens']} tokens")
    excess = calibrated(gen)
    cols = step_columns(gen["overlap_k"], excess)
    term.prose(console, title)
    console.print(term.fit_table(console, cols, [_cells(gen, r, excess) for r in gen["steps"]],
                                 drop=(f"top-{gen['overlap_k']} overlap", "ref margin"),
                                 left=("ref token", "cand token", "status"), header_style="bold"))
    render_summary(report, console)


def calibrated(gen: dict[str, Any]) -> bool:
    """Whether the steps were judged against the precision twin (an excess per step)."""
    if gen.get("tolerance") is not None:
        return gen["tolerance"] == "calibrated"
    return any(r.get("excess") is not None for r in gen.get("steps", []))


def step_columns(overlap_k: int, excess: bool) -> list[str]:
    """The console table's columns: excess (calibrated) right after max abs err."""
    return ["step", "ref token", "cand token", "max abs err", *(["excess"] if excess else []), "ref margin",
            f"top-{overlap_k} overlap", "status"]


def _cells(gen: dict[str, Any], r: dict[str, Any], excess: bool) -> list[str]:
    ov = "-" if r["topk_overlap"] is None else f"{r['topk_overlap']:.2f}"
    from rich.markup import escape

    cells = [str(r["step"]), escape(_tok(gen, r["ref_token"])), escape(_tok(gen, r["cand_token"])), fmt(r["max_abs_err"], 3)]
    if excess:
        cells.append(xfmt(r.get("excess")))
    return cells + [fmt(r["ref_margin"], 3), ov, _status(r)]


def _line(console: Any, text: str, style: str | None = None) -> None:
    from parity.report.term import prose

    prose(console, text, style)


def render_summary(report: ReportData, console: Any) -> None:
    gen = report.generation or {}
    ref, cand = gen["reference"], gen["candidate"]
    _line(console, f"reference ({ref['ended_by']}): {ref['text']}")
    if gen["mode"] == "teacher-forced":
        _line(console, f"candidate's own choices (fed the reference's tokens): {cand['predicted_text']}")
        if len(cand["tokens"]) > len(ref["tokens"]):
            _line(console, f"candidate sequence ({cand['ended_by']}): {cand['text']}")
    else:
        _line(console, f"candidate ({cand['ended_by']}): {cand['text']}")
    _line(console, "stop sets: reference " + ", ".join(ref["stop_tokens"]) + " | candidate "
          + ", ".join(cand["stop_tokens"]))
    if (gen.get("stop_set_diff") or {}).get("note"):
        _line(console, "note: " + gen["stop_set_diff"]["note"])
    curve = gen.get("error_curve") or []
    if gen["mode"] == "teacher-forced" and curve:
        _line(console, "error curve (logits max abs err per step): " + " ".join(fmt(e, 2) for e in curve))
        if calibrated(gen):
            _line(console, f"excess per step (budget {xfmt(gen.get('budget'))}): "
                  + " ".join(xfmt(r.get("excess")) for r in gen["steps"] if r["comparable"]))
    flip = gen.get("first_token_flip_step")
    if flip is not None:
        r = gen["steps"][flip]
        _line(console, f"first token flip: step {flip}, {_tok(gen, r['ref_token'])} -> {_tok(gen, r['cand_token'])}, "
              f"reference margin {fmt(r['ref_margin'], 3)}, gap to the candidate's token {fmt(r['gap'], 3)} "
              f"-> {r['flip']} (near tie: gap <= {gen['near_tie_factor']:g} x {_band(gen)})")
    for d in gen.get("sampling_diff") or []:
        _line(console, f"sampling: {d['key']}: reference {d['reference']!r}, candidate {d['candidate']!r}")
    s = report.summary
    _line(console, s["message"], "bold green" if s["verdict"] == "pass" else "bold red")
    if gen.get("hint"):
        _line(console, f"Diagnosis: {gen['hint']}")


def _band(gen: dict[str, Any]) -> str:
    """What one logit may move by, in the flip line's words."""
    if calibrated(gen):
        return f"the band one logit may move ({fmt(gen.get('budget'))} x the twin's max abs err)"
    return "logits tolerance band"


def steps_csv(report: ReportData) -> str:
    return rows_csv((report.generation or {}).get("steps", []), list(STEP_COLUMNS))


def write(report: ReportData, out_dir: Path) -> dict[str, Path]:
    """report.json and steps.csv into ``out_dir``, both rendered before either is written."""
    paths = {"json": out_dir / "report.json", "csv": out_dir / "steps.csv"}
    texts = {"json": to_json(report), "csv": steps_csv(report)}
    for key, path in paths.items():
        atomic_write(path, texts[key])
    return paths

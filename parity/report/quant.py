"""Renderers of quantized runs: the attribution and sensitivity section of a ``parity run
--candidate quant`` report (HTML), and the ``parity quant-sweep`` table (console, JSON, CSV,
HTML). They read what parity.run.quant and parity.run.quant_sweep put in the document."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from parity.report.data import _jsonable
from parity.report.bars import bars, view
from parity.report.files import atomic_write, rows_csv

SWEEP_COLUMNS = ["scheme", "status", "logits_nrmse", "logits_max_abs_err", "excess_over_twin", "first_divergent_block",
                 "sensitive_blocks", "isolated_blocks", "top_block_agrees", "rougeL_vs_reference", "token_agreement",
                 "budget", "verdict", "wall_s"]


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, list):
        return ",".join(map(str, v)) or "-"
    return str(v)


#: the sweep table's columns (key -> header), and those dropped first on a narrow console
SWEEP_HEADS = {"scheme": "scheme", "logits_nrmse": "logits nrmse", "excess_over_twin": "excess vs twin",
               "first_divergent_block": "1st div. block", "sensitive_blocks": "sensitive blocks",
               "isolated_blocks": "isolated top", "rougeL_vs_reference": "ROUGE-L vs ref", "token_agreement": "agreement",
               "budget": "budget", "verdict": "verdict", "wall_s": "wall s"}
SWEEP_DROP = ("wall s", "isolated top", "1st div. block", "agreement", "sensitive blocks", "excess vs twin")


def render_sweep(doc: dict[str, Any], console: Any = None) -> None:
    from rich.markup import escape

    from parity.report import term

    console = console or term.make_console()
    run = doc["run"]
    heads = list(SWEEP_HEADS.values())
    rows, problems = [], []
    for r in doc["table"]:
        if r.get("status") != "ran":  # the reason is printed below the table, whole
            problems.append(f"{r['scheme']}: {r.get('status', '-')}")
            rows.append([escape(r["scheme"]), *["-"] * (len(heads) - 3), "not run", "-"])
            continue
        rows.append([escape(_cell(r.get(k))) for k in SWEEP_HEADS])
    term.prose(console, f"parity quant-sweep: {run.get('model')} ({run.get('source')}) | reference float32 vs each "
               f"scheme ({run.get('dtype')} activations) | {run.get('tokens')} tokens")
    console.print(term.fit_table(console, heads, rows, drop=SWEEP_DROP, left=("scheme", "verdict"), header_style="bold"))
    for line in problems:
        term.prose(console, line, lead="  - ")
    for r in doc["table"]:
        line = agreement_line(r)
        if line:
            term.prose(console, line)
    term.prose(console, f"Latency: {doc['latency']}.")
    if doc.get("eval"):
        e = doc["eval"]
        term.prose(console, f"ROUGE-L: {e['metric']}; {e['prompts']} prompts of {e['dataset']}, greedy, at most "
                   f"{e['max_new_tokens']} tokens.")
    else:
        term.prose(console, "ROUGE-L: not measured (no tokenizer: seeded weights produce no text worth scoring, or "
                   "--no-rouge).")
    diverged = diverged_schemes(doc)
    if diverged:
        term.prose(console, f"DIVERGED: {', '.join(diverged)} over the budget (exit 1).", style="bold red")


def diverged_schemes(doc: dict[str, Any]) -> list[str]:
    """The schemes that ran and whose verdict is not a pass (what makes quant-sweep exit 1)."""
    return [r["scheme"] for r in doc["table"] if r.get("status") == "ran" and r.get("verdict") not in ("pass", None)]


def agreement_line(row: dict[str, Any]) -> str | None:
    """Does the top block in isolation (excess) also top the sensitivity sweep? With the numbers."""
    q = row.get("quant") or {}
    a, sens = q.get("agreement"), q.get("sensitivity")
    if not a or not sens or a.get("isolated_top") is None:
        return None
    err = {b["block"]: b["logits_nrmse"] for b in sens["blocks"]}
    iso, top = a["isolated_top"], a["sensitivity_top"]
    if a["agree"]:
        return f"{row['scheme']}: block {iso} tops both rankings (alone it gives logits nrmse {err[iso]:.3g})"
    return (f"{row['scheme']}: isolated top block {iso} is #{a['sensitivity_rank_of_isolated_top']} by sensitivity "
            f"(logits nrmse {err[iso]:.3g} alone, vs {err[top]:.3g} for block {top})")


def sweep_csv(doc: dict[str, Any]) -> str:
    return rows_csv([{k: (",".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()} for r in doc["table"]],
                    SWEEP_COLUMNS)


def sweep_html(doc: dict[str, Any]) -> str:
    from parity.report.html import _env

    ran = [r for r in doc["table"] if r.get("status") == "ran"]
    chart = bars([(r["scheme"], r["logits_nrmse"]) for r in ran], height=200, log=True)
    views = {r["scheme"]: view(r.get("quant")) for r in ran if r.get("quant")}
    return _env().get_template("quant_sweep.html.j2").render(doc=doc, run=doc["run"], rows=doc["table"], chart=chart,
                                                             views=views, columns=SWEEP_COLUMNS, cell=_cell,
                                                             heads={**SWEEP_HEADS, "logits_max_abs_err": "logits max abs err",
                                                                    "top_block_agrees": "top block agrees"})


def write_sweep(doc: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """sweep.json, sweep.csv and sweep.html, all rendered before any is written."""
    paths = {"json": out_dir / "sweep.json", "csv": out_dir / "sweep.csv", "html": out_dir / "sweep.html"}
    texts = {"json": json.dumps(_jsonable(doc), indent=2, allow_nan=False, default=str) + "\n", "csv": sweep_csv(doc),
             "html": sweep_html(doc)}
    for key, path in paths.items():
        atomic_write(path, texts[key])
    return paths


def write_sweep_html(doc: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    atomic_write(path, sweep_html(doc))
    return path

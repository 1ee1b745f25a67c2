"""Renderers of ``parity eval`` (console, JSON + CSV, HTML). They read the document
parity.run.evaluate builds; nothing is recomputed."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from parity.report.bars import bars
from parity.report.data import _jsonable
from parity.report.files import atomic_write, rows_csv

ROUGE = ("rouge1", "rouge2", "rougeL", "rougeLsum")
PROMPT_COLUMNS = ["line", "kind", "ref_tokens", "cand_tokens", "agreement", "first_divergent_token", "exact_match",
                  *ROUGE, *(f"target_{k}_reference" for k in ROUGE), *(f"target_{k}_candidate" for k in ROUGE),
                  "ref_ended_by", "cand_ended_by", "stop_outcome", "reference_text", "candidate_text", "target"]


def flat(row: dict[str, Any]) -> dict[str, Any]:
    """A per-prompt row with its ROUGE dicts spread into columns (the CSV's)."""
    out = {k: v for k, v in row.items() if not isinstance(v, dict)}
    out.update(row.get("rouge_vs_reference") or {})
    for side, key in (("reference", "rouge_ref_vs_target"), ("candidate", "rouge_cand_vs_target")):
        for k, v in (row.get(key) or {}).items():
            out[f"target_{k}_{side}"] = v
    out["stop_outcome"] = (row.get("stop_outcome") or {}).get("message")
    return out


def render(doc: dict[str, Any], console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    from parity.report.console import width

    console = console or Console(width=width())
    ev = doc["eval"]
    t = Table(title=f"parity eval: {doc['run']['model']} | reference vs {doc['run']['candidate'].get('name')} | {ev['dataset']}",
              title_justify="left")
    for c in ("line", "tokens r/c", "agree", "1st diff", "exact", "R-1", "R-2", "R-L", "R-Lsum", "ended"):
        t.add_column(c, justify="left" if c == "ended" else "right", no_wrap=True)
    for r in ev["prompts"]:
        rg = r["rouge_vs_reference"]
        so = r.get("stop_outcome")
        t.add_row(str(r["line"]), f"{r['ref_tokens']}/{r['cand_tokens']}", f"{r['agreement']:.3f}",
                  "-" if r["first_divergent_token"] is None else str(r["first_divergent_token"]),
                  "yes" if r["exact_match"] else "no", *(f"{rg[k]:.1f}" for k in ROUGE),
                  so["kind"] if so else r["cand_ended_by"])
    console.print(t)
    console.print(doc["summary"]["message"], markup=False, highlight=False, soft_wrap=True)
    for r in ev["prompts"]:
        if r.get("stop_outcome"):
            console.print(f"  - line {r['line']}: {r['stop_outcome']['message']}", markup=False, highlight=False, soft_wrap=True)
    for n in ev.get("fault_notes") or []:
        console.print(f"  fault: {n}", markup=False, highlight=False)


def write(doc: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """report.json (the ``eval`` section) and prompts.csv, both rendered before either is written."""
    paths = {"json": out_dir / "report.json", "csv": out_dir / "prompts.csv"}
    texts = {"json": json.dumps(_jsonable(doc), indent=2, allow_nan=False) + "\n",
             "csv": rows_csv([flat(r) for r in doc["eval"]["prompts"]], PROMPT_COLUMNS)}
    for key, path in paths.items():
        atomic_write(path, texts[key])
    return paths


def html(doc: dict[str, Any]) -> str:
    from parity.report.html import _env

    ev = doc["eval"]
    chart = bars([(r["line"], r["rouge_vs_reference"]["rougeL"]) for r in ev["prompts"]], height=180)
    return _env().get_template("eval.html.j2").render(doc=doc, ev=ev, run=doc["run"], s=doc["summary"], chart=chart,
                                                      rouge=ROUGE, rows=[flat(r) for r in ev["prompts"]])


def write_html(doc: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    atomic_write(path, html(doc))
    return path

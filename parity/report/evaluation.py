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
    from rich.markup import escape

    from parity.report import term

    console = console or term.make_console()
    ev = doc["eval"]
    cols = ["line", "tokens r/c", "agree", "1st diff", "exact", "R-1", "R-2", "R-L", "R-Lsum", "ended"]
    rows = []
    for r in ev["prompts"]:
        rg = r["rouge_vs_reference"]
        so = r.get("stop_outcome")
        rows.append([str(r["line"]), f"{r['ref_tokens']}/{r['cand_tokens']}", f"{r['agreement']:.3f}",
                     "-" if r["first_divergent_token"] is None else str(r["first_divergent_token"]),
                     "yes" if r["exact_match"] else "no", *(f"{rg[k]:.1f}" for k in ROUGE),
                     escape(str(so["kind"] if so else r["cand_ended_by"]))])
    term.prose(console, f"parity eval: {doc['run']['model']} | reference vs {candidate_label(doc['run'])} | {ev['dataset']}")
    console.print(term.fit_table(console, cols, rows, drop=("R-Lsum", "R-2", "R-1", "1st diff"), left=("ended",),
                                 header_style="bold"))
    term.prose(console, doc["summary"]["message"])
    for r in ev["prompts"]:
        if r.get("stop_outcome"):
            term.prose(console, f"line {r['line']}: {r['stop_outcome']['message']}", lead="  - ")
    for n in ev.get("fault_notes") or []:
        term.prose(console, str(n), lead="  fault: ")


def candidate_label(run: dict[str, Any]) -> str:
    """The candidate as a reader names it: its engine, and the quantization scheme when one
    is applied (``quant int8-wo``), its dtype."""
    cand = run.get("candidate") or {}
    quant = cand.get("quant")
    scheme = quant.get("scheme") if isinstance(quant, dict) else quant
    return " ".join(str(x) for x in (cand.get("name"), scheme, cand.get("dtype")) if x)


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
    chart = bars([(r["line"], r["rouge_vs_reference"]["rougeL"]) for r in ev["prompts"]], height=180, top_value=100.0)
    return _env().get_template("eval.html.j2").render(doc=doc, ev=ev, run=doc["run"], s=doc["summary"], chart=chart,
                                                      rouge=ROUGE, rows=[flat(r) for r in ev["prompts"]],
                                                      label=label, candidate=candidate_label(doc["run"]))


#: readable names of the eval document's keys (the page shows these, the JSON and CSV the keys)
LABELS = {"prompts": "prompts", "agreement": "token agreement", "exact_match": "exact match (share of prompts)",
          "overruns": "overruns / early stops", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L",
          "rougeLsum": "ROUGE-Lsum"}


def label(key: str) -> str:
    """A key of the eval document as the page names it: ``target_rougeL_delta`` ->
    "ROUGE-L vs targets: candidate - reference"."""
    if key in LABELS:
        return LABELS[key]
    parts = key.split("_")
    if len(parts) == 3 and parts[0] == "target" and parts[1] in LABELS:
        side = {"reference": "reference", "candidate": "candidate", "delta": "candidate - reference"}.get(parts[2], parts[2])
        return f"{LABELS[parts[1]]} vs targets: {side}"
    return key.replace("_", " ")


def write_html(doc: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    atomic_write(path, html(doc))
    return path

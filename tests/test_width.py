"""Every line parity prints fits the console (80 and 100 columns) and no table cell is cut:
prose wraps between words, tables drop their optional columns instead of ending a cell in '…'.

The fast tests render real reports (and eval / sweep documents of the shapes parity writes)
through a recorded console; the slow ones run the commands with COLUMNS set and read every
line of stdout and stderr (progress lines included)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from parity.report import compare, console, evaluation, generation, quant, term
from report_samples import failing_generation_report, sample_reports

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = (80, 100)
LONG_PATH = "/very/long/folder/name/that/keeps/going/and/going/without/any/space/at/all/report.json"


def check(text: str, width: int) -> list[str]:
    """The lines of ``text``; asserts none is wider than ``width`` and none holds a cut cell."""
    lines = text.splitlines()
    wide = [(len(ln.rstrip()), ln) for ln in lines if len(ln.rstrip()) > width]
    assert not wide, f"{len(wide)} lines wider than {width}: {wide[:3]}"
    cut = [ln for ln in lines if "…" in ln]
    assert not cut, f"cut cells: {cut[:3]}"
    return lines


def rendered(render: Any, *args: Any, width: int, **kw: Any) -> str:
    out = Console(record=True, width=width, color_system=None)
    render(*args, console=out, **kw)
    return out.export_text()


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("wide", [False, True], ids=["compact", "wide"])
def test_run_tables_and_prose_fit(width: int, wide: bool) -> None:
    broken, fixed = sample_reports()
    text = {}
    for report in (broken, fixed):
        lines = check(rendered(console.render, report, width=width, wide=wide, every_row=True), width)
        body = "\n".join(lines)
        assert all(re.search(rf"^{re.escape(r.name)}\s", body, re.M) for r in report.probes)  # names whole
        header = next(ln for ln in lines if ln.startswith("probe ")).split()
        assert header[-1] == "status" and "excess" in header
        text[report.summary["verdict"]] = " ".join(" ".join(lines).split())
    assert " ".join(broken.summary["message"].split()) in text["diverged"]  # the verdict wrapped, not cut


def test_wide_keeps_statistics_when_there_is_room() -> None:
    broken, _ = sample_reports()
    header = next(ln for ln in rendered(console.render, broken, width=260, wide=True).splitlines()
                  if ln.startswith("probe "))
    assert all(c in header for c in ("ref mean", "cand sum", "mean abs err", "max rel err", "cosine", "status"))


@pytest.mark.parametrize("width", WIDTHS)
def test_generate_fits(width: int) -> None:
    rep = failing_generation_report()
    lines = check(rendered(generation.render, rep, width=width), width)
    header = next(ln for ln in lines if ln.lstrip().startswith("step ")).split()
    assert header[:3] == ["step", "ref", "token"] and header[-1] == "status"


@pytest.mark.parametrize("width", WIDTHS)
def test_diff_headers_and_values_whole(width: int) -> None:
    broken, fixed = sample_reports()
    d = compare.diff_reports(broken, fixed)
    lines = check(rendered(compare.render_console, d, width=width, show_all=True), width)
    header = next(ln for ln in lines if ln.startswith("probe ")).split()
    assert "status" in header and "change" in header
    names = {ln.split()[0] for ln in lines}
    assert {r.name for r in d.rows} <= names


def sweep_doc() -> dict[str, Any]:
    """A sweep document as parity.run.quant_sweep writes it: one scheme per row, one failed."""
    row = {"status": "ran", "logits_nrmse": 0.0147, "logits_max_abs_err": 0.105, "excess_over_twin": 10.4,
           "first_divergent_block": 0, "sensitive_blocks": [0, 1, 2], "isolated_blocks": [0, 2, 1],
           "top_block_agrees": True, "rougeL_vs_reference": 95.5, "token_agreement": 0.792, "budget": 0.05,
           "verdict": "pass", "wall_s": 15.4, "quant": None}
    table = [{**row, "scheme": "fp16 (twin)", "budget": None}, {**row, "scheme": "int8-wo"},
             {**row, "scheme": "int4-awq", "logits_nrmse": 0.684, "verdict": "diverged", "budget": 0.5},
             {"scheme": "int8-kv", "status": "error: BackendError: scheme 'int8-kv' quantized nothing in this model. "
                                             "Note: ModelOpt found no Linear / attention it knows"},
             {"scheme": "nvfp4", "status": "needs CUDA (device cpu)"}]
    return {"run": {"model": "smollm2", "source": LONG_PATH, "dtype": "fp16", "tokens": 36},
            "table": table, "latency": "not measured: fake quantization runs in floating point", "eval": None}


@pytest.mark.parametrize("width", WIDTHS)
def test_quant_sweep_scheme_names_whole(width: int) -> None:
    doc = sweep_doc()
    lines = check(rendered(quant.render_sweep, doc, width=width), width)
    firsts = [ln.split()[0] for ln in lines if ln.split()]
    assert {"int8-wo", "int4-awq", "int8-kv", "nvfp4"} <= set(firsts)
    text = " ".join(" ".join(lines).split())
    assert "quantized nothing in this model" in text and "needs CUDA (device cpu)" in text  # below the table, whole
    assert quant.diverged_schemes(doc) == ["int4-awq"] and "DIVERGED: int4-awq" in text


def eval_doc() -> dict[str, Any]:
    rg = {"rouge1": 51.2, "rouge2": 30.1, "rougeL": 45.0, "rougeLsum": 45.0}
    prompt = {"line": 1, "kind": "article", "ref_tokens": 48, "cand_tokens": 48, "agreement": 0.625,
              "first_divergent_token": 18, "exact_match": False, "rouge_vs_reference": rg,
              "ref_ended_by": "--max-new-tokens", "cand_ended_by": "--max-new-tokens",
              "stop_outcome": {"kind": "overrun", "message": "the candidate ran past the reference's stop token "
                               "<|im_end|> by 12 tokens " + "(" + LONG_PATH + ")"}}
    return {"run": {"model": "smollm2", "candidate": {"name": "quant", "quant": {"scheme": "int8-wo"}, "dtype": "fp16"}},
            "summary": {"message": "EVAL | quant int8-wo vs reference over 2 prompts | rougeL 45.0 | rouge1 51.2 | "
                                   "rouge2 30.1 | token agreement 0.625 | exact match 0.00"},
            "eval": {"dataset": "built-in summarize.jsonl (8 articles)", "prompts": [prompt, {**prompt, "line": 2}],
                     "fault_notes": ["eos-token: the candidate stops only at <|endoftext|>"]}}


@pytest.mark.parametrize("width", WIDTHS)
def test_eval_fits_and_names_the_scheme(width: int) -> None:
    lines = check(rendered(evaluation.render, eval_doc(), width=width), width)
    assert "quant int8-wo" in lines[0]
    assert any(ln.split()[:2] == ["line", "tokens"] for ln in lines)


@pytest.mark.parametrize("width", WIDTHS)
def test_prose_folds_a_word_longer_than_the_line(width: int) -> None:
    out = Console(record=True, width=width, color_system=None)
    term.prose(out, f"Reports: {LONG_PATH * 2}  {LONG_PATH}")
    term.prose(out, "word " * 60, lead="  - ")
    lines = check(out.export_text(), width)
    assert "".join(ln.strip() for ln in lines).count("report.json") == 3
    assert all(ln.startswith("    ") for ln in lines[-3:])  # the bullet's text hangs under itself


def test_fit_table_drops_the_lowest_priority_first_and_never_cuts() -> None:
    out = Console(record=True, width=40, color_system=None)
    cols = ["name", "a", "b", "c"]
    rows = [["blocks.12.attn.q_rot", "1.2345", "2.3456", "3.4567"]]
    out.print(term.fit_table(out, cols, rows, drop=("c", "b"), left=("name",)))
    text = out.export_text()
    assert "blocks.12.attn.q_rot" in text and "1.2345" in text and "3.4567" not in text
    out = Console(record=True, width=12, color_system=None)  # too narrow even without optional columns
    out.print(term.fit_table(out, cols, rows, drop=("c", "b"), left=("name",)))
    check(out.export_text(), 12)


# --------------------------------------------------------------------------- the commands, end to end


def _parity(args: list[str], width: int, cwd: Path) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": str(width)}
    r = subprocess.run([sys.executable, "-m", "parity", *args], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=900)
    return r.returncode, r.stdout + r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("width", WIDTHS)
def test_every_command_fits_the_terminal(width: int, tmp_path: Path) -> None:
    """A passing run, a failing port run, --wide, generate, quant-sweep, diff and doctor, with
    their progress lines: every line of stdout and stderr within COLUMNS, no cut cell."""
    port = ["--candidate", "port", "--fault", "silu-wrong-branch@2"]
    commands = [
        (["run", "--model", "qwen", "--out", str(tmp_path / "pass")], 0),
        (["run", "--model", "qwen", *port, "--out", str(tmp_path / "fail")], 1),
        (["run", "--model", "qwen", *port, "--wide", "--no-files"], 1),
        (["generate", "--model", "qwen", *port, "--out", str(tmp_path / "gen")], 1),
        (["quant-sweep", "--model", "qwen", "--schemes", "int8-wo,nvfp4", "--no-rouge", "--tokens", "8",
          "--out", str(tmp_path / "sweep")], 0),
        (["diff", str(tmp_path / "fail"), str(tmp_path / "pass"), "--all"], 0),
        (["doctor"], 0),
    ]
    for args, code in commands:
        rc, text = _parity(args, width, tmp_path)
        assert rc == code, (args, text[-2000:])
        check(text, width)


@pytest.mark.slow
@pytest.mark.real
@pytest.mark.parametrize("width", WIDTHS)
def test_eval_fits_the_terminal(width: int, tmp_path: Path) -> None:
    pytest.importorskip("rouge_score", reason="needs rouge-score: pip install 'parity-debugger[eval]'")
    from parity.loading import fetch

    real = fetch.model_dir("smollm2")  # under this session's $PARITY_CACHE (conftest)
    if not (real / "config.json").is_file():
        orig = Path.home() / ".cache" / "parity" / "models" / "smollm2"
        if not (orig / "config.json").is_file():
            pytest.skip("SmolLM2 is not fetched: run `make model` (parity fetch smollm2)")
        real.parent.mkdir(parents=True, exist_ok=True)
        real.symlink_to(orig, target_is_directory=True)
    rc, text = _parity(["eval", "--model", "smollm2", "--limit", "2", "--max-new-tokens", "8",
                        "--out", str(tmp_path / "eval")], width, tmp_path)
    assert rc == 0, text[-2000:]
    check(text, width)

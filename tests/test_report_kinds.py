"""`parity report` renders every kind of report parity writes (run, generate, eval,
quant-sweep); `parity diff` compares two runs probe by probe or two generate runs step by step,
and refuses two reports of different kinds (exit 2, with a Note).

tests/data/eval_report.json and sweep_report.json are real outputs (`parity eval --model
smollm2 --limit 2 --max-new-tokens 8`; `parity quant-sweep --model qwen`, the sensitivity
detail kept for one scheme only)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from parity.report import files
from parity.report import generation as gen_report
from report_samples import failing_generation_report, generation_report, sample_reports

DATA = Path(__file__).parent / "data"


def _run_dir(tmp_path: Path, name: str, report) -> Path:
    out = tmp_path / name
    out.mkdir()
    (files.write if report.generation is None else gen_report.write)(report, out)
    return out


@pytest.fixture
def kinds(tmp_path: Path) -> dict[str, Path]:
    broken, fixed = sample_reports()
    out = {"run": _run_dir(tmp_path, "run", broken), "run-fixed": _run_dir(tmp_path, "run-fixed", fixed),
           "generate": _run_dir(tmp_path, "gen", generation_report()),
           "generate-failing": _run_dir(tmp_path, "gen-failing", failing_generation_report())}
    for kind, name, file in (("eval", "eval", "report.json"), ("quant-sweep", "sweep", "sweep.json")):
        (tmp_path / name).mkdir()
        shutil.copy(DATA / f"{name}_report.json", tmp_path / name / file)
        out[kind] = tmp_path / name
    return out


@pytest.mark.parametrize("kind", ["run", "generate", "eval", "quant-sweep"])
def test_report_renders_every_kind(kinds: dict[str, Path], kind: str, run_cli, tmp_path: Path) -> None:
    page = tmp_path / f"{kind}.html"
    code, out, err = run_cli("report", str(kinds[kind]), "-o", str(page))
    assert code == 0, err
    assert f"HTML report: {page}" in out and page.stat().st_size > 2000
    html = page.read_text()
    assert "</html>" in html and "Traceback" not in html


def test_eval_page_names_the_scheme_reads_labels_and_fixes_the_axis(tmp_path: Path) -> None:
    from parity.report import evaluation

    doc = json.loads((DATA / "eval_report.json").read_text())
    doc["run"]["candidate"] = {"name": "quant", "dtype": "float16", "quant": {"scheme": "int8-wo"}}
    page = evaluation.html(doc)
    assert "reference vs quant int8-wo float16" in page
    assert ">token agreement<" in page and ">ROUGE-L vs targets: candidate - reference<" in page
    assert not re.search(r"<th[^>]*>target_rougeL_delta<", page)  # raw keys only in title attributes
    low = evaluation.bars([(1, 31.0)], height=180, top_value=100.0)
    full = evaluation.bars([(1, 100.0)], height=180, top_value=100.0)
    assert abs(low["bars"][0]["h"] / full["bars"][0]["h"] - 0.31) < 0.01  # 31 reads as 31 of 100
    assert low["ticks"][-1]["text"] == "100"


def test_diff_of_two_generate_runs_compares_their_steps(kinds: dict[str, Path], run_cli) -> None:
    code, out, err = run_cli("diff", str(kinds["generate-failing"]), str(kinds["generate"]), "--all")
    assert code == 0, err
    steps = len(generation_report().generation["steps"])
    assert re.search(r"^step\s+status A\s+status B", out, re.M)
    assert len(re.findall(r"^step \d+\s", out, re.M)) >= steps
    assert re.search(r"\d+ steps: ", out)
    code, out, _ = run_cli("diff", str(kinds["generate"]), str(kinds["generate-failing"]))
    assert code == 1 and "broke" in out  # a step that passed fails in B


@pytest.mark.parametrize(("a", "b"), [("run", "generate"), ("generate", "run"), ("run", "eval"), ("quant-sweep", "run")])
def test_diff_of_different_kinds_is_exit_2_with_a_note(kinds: dict[str, Path], run_cli, a: str, b: str) -> None:
    code, out, err = run_cli("diff", str(kinds[a]), str(kinds[b]))
    assert code == 2 and not out.strip()
    assert err.count("\n") == 1 and "Note:" in err and "parity: error:" in err


def test_diff_of_two_runs_still_compares_probes(kinds: dict[str, Path], run_cli) -> None:
    code, out, _ = run_cli("diff", str(kinds["run"]), str(kinds["run-fixed"]))
    assert code == 0 and "fixed" in out and re.search(r"^probe\s+status A", out, re.M)


@pytest.mark.parametrize("diverged", [False, True])
def test_quant_sweep_exits_1_when_a_scheme_is_over_its_budget(monkeypatch: pytest.MonkeyPatch, run_cli,
                                                              tmp_path: Path, diverged: bool) -> None:
    """The sweep's exit code (the schemes themselves are the real sweep's rows, replayed): 1 when
    a scheme that ran is over its budget, 0 otherwise; a scheme that could not run is listed."""
    import parity.run.quant_sweep as sweep

    doc = json.loads((DATA / "sweep_report.json").read_text())
    doc["table"].append({"scheme": "nvfp4", "status": "needs CUDA (device cpu)"})
    if diverged:
        doc["table"][2]["verdict"] = "diverged"
    monkeypatch.setattr(sweep, "execute", lambda *a, **k: doc)
    code, out, err = run_cli("quant-sweep", "--model", "qwen", "--schemes", "int8-wo", "--no-rouge", "-q",
                             "--out", str(tmp_path / "sweep"))
    assert code == (1 if diverged else 0), err
    assert "nvfp4: needs CUDA (device cpu)" in out
    assert ("DIVERGED: " + doc["table"][2]["scheme"] in out) == diverged

"""parity eval: JSONL input checks (line numbers, exit 2), token agreement and ROUGE
(Google's rouge-score), and on the real SmolLM2 the reference against itself (ROUGE 100,
agreement 1.0) and the eos-token fault (an overrun, lower ROUGE)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from parity.errors import InputError
from parity.run import evaluate



# -- input ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("lines, text", [
    (['{"prompt": "a"}', '{"prompt": "b"', '{"prompt": "c"}'], "line 2 is not valid JSON"),
    (['{"prompt": "a"}', "", '["x"]'], "line 3 is a JSON list"),
    (['{"article": "a", "highlights": "h"}', '{"text": "b"}'], "line 2 has no 'prompt' or 'article' text"),
    (['{"prompt": "a", "target": 3}'], "line 1: 'target'/'highlights' must be a string"),
    (["", "  "], "no prompts (the file is empty)"),
])
def test_bad_jsonl_is_exit_2_naming_the_line(run_cli, tmp_path: Path, lines: list[str], text: str) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="line|empty"):
        evaluate.load_items(path)
    code, _, err = run_cli("eval", "--model", "smollm2", "--dataset", str(path), "--no-files", "-q")
    assert code == 2 and text in err and err.count("\n") == 1


def test_missing_dataset_is_exit_2(run_cli, tmp_path: Path) -> None:
    code, _, err = run_cli("eval", "--model", "smollm2", "--dataset", str(tmp_path / "none.jsonl"), "-q")
    assert code == 2 and "no such file" in err


def test_builtin_set_has_articles_with_highlights() -> None:
    items, label = evaluate.load_items()
    assert len(items) >= 5 and label.startswith("built-in")
    assert all(it.kind == "article" and it.target for it in items)
    assert items[0].instruction.startswith("Summarize the following article")
    assert len(evaluate.load_items(limit=2)[0]) == 2


# -- metrics -------------------------------------------------------------------------------------

def test_token_metrics() -> None:
    assert evaluate.token_metrics([1, 2, 3], [1, 2, 3]) == {"agreement": 1.0, "first_divergent_token": None, "exact_match": True}
    m = evaluate.token_metrics([1, 2, 3, 4], [1, 9, 3])
    assert m["agreement"] == 0.5 and m["first_divergent_token"] == 1 and not m["exact_match"]
    assert evaluate.token_metrics([1, 2], [1, 2, 5])["first_divergent_token"] == 2


def test_rouge_is_googles_f1_in_percent() -> None:
    pytest.importorskip("rouge_score", reason="needs rouge-score: pip install 'parity-debugger[eval]'")
    sc = evaluate.scorer()
    same = evaluate.rouge(sc, "The cat sat on the mat.", "The cat sat on the mat.")
    assert same == {k: 100.0 for k in evaluate.ROUGE_KEYS}
    part = evaluate.rouge(sc, "the cat sat on the mat", "the cat lay on a rug")
    assert 0 < part["rouge2"] < part["rouge1"] < 100
    assert evaluate.rouge(sc, "", "")["rougeL"] == 100.0


def test_overall_means_and_target_delta() -> None:
    rows = [{"agreement": 1.0, "exact_match": True, "stop_outcome": None,
             "rouge_vs_reference": {k: 100.0 for k in evaluate.ROUGE_KEYS},
             "rouge_ref_vs_target": {k: 40.0 for k in evaluate.ROUGE_KEYS},
             "rouge_cand_vs_target": {k: 30.0 for k in evaluate.ROUGE_KEYS}},
            {"agreement": 0.5, "exact_match": False, "stop_outcome": {"kind": "overrun"},
             "rouge_vs_reference": {k: 50.0 for k in evaluate.ROUGE_KEYS},
             "rouge_ref_vs_target": {k: 20.0 for k in evaluate.ROUGE_KEYS},
             "rouge_cand_vs_target": {k: 20.0 for k in evaluate.ROUGE_KEYS}}]
    ov = evaluate.overall(rows)
    assert ov["rougeL"] == 75.0 and ov["agreement"] == 0.75 and ov["exact_match"] == 0.5 and ov["overruns"] == 1
    assert ov["target_rougeL_reference"] == 30.0 and ov["target_rougeL_delta"] == -5.0


# -- the real model ------------------------------------------------------------------------------

@pytest.fixture
def smollm2() -> None:
    from parity.loading import fetch

    real = fetch.model_dir("smollm2")
    pytest.importorskip("rouge_score", reason="needs rouge-score: pip install 'parity-debugger[eval]'")
    if not (real / "config.json").is_file():
        import os

        orig = Path(os.path.expanduser("~/.cache/parity/models/smollm2"))
        if not (orig / "config.json").is_file():
            pytest.skip("SmolLM2 is not fetched: run `make model` (parity fetch smollm2)")
        real.parent.mkdir(parents=True, exist_ok=True)
        real.symlink_to(orig, target_is_directory=True)


@pytest.mark.real
@pytest.mark.slow
def test_reference_against_itself_is_rouge_100(smollm2, run_cli, tmp_path: Path) -> None:
    code, out, _ = run_cli("eval", "--model", "smollm2", "--candidate", "reference", "--limit", "2",
                           "--max-new-tokens", "8", "-q", "--out", str(tmp_path), "--html", str(tmp_path / "eval.html"))
    assert code == 0
    doc = json.loads((tmp_path / "report.json").read_text())
    ov = doc["eval"]["overall"]
    assert ov["rougeL"] == 100.0 and ov["rouge1"] == 100.0 and ov["rougeLsum"] == 100.0
    assert ov["agreement"] == 1.0 and ov["exact_match"] == 1.0 and ov["overruns"] == 0
    assert ov["target_rougeL_delta"] == 0.0 and ov["target_rougeL_reference"] > 0
    assert "line,kind" in (tmp_path / "prompts.csv").read_text().splitlines()[0]
    assert "ROUGE-L" in (tmp_path / "eval.html").read_text()


@pytest.mark.real
@pytest.mark.slow
def test_eos_fault_overruns_and_costs_rouge(smollm2, run_cli, tmp_path: Path) -> None:
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"prompt": "What is the capital of France? Answer with one word.", "target": "Paris"}) + "\n")
    code, out, _ = run_cli("eval", "--model", "smollm2", "--dtype", "fp32", "--fault", "eos-token", "--dataset", str(data),
                           "--max-new-tokens", "32", "-q", "--out", str(tmp_path / "r"))
    assert code == 0
    doc = json.loads((tmp_path / "r" / "report.json").read_text())
    row = doc["eval"]["prompts"][0]
    assert row["stop_outcome"]["kind"] == "overrun" and "<|im_end|>" in row["stop_outcome"]["message"]
    assert row["cand_tokens"] > row["ref_tokens"] and row["rouge_vs_reference"]["rougeL"] < 90
    assert "overrun" in out and "candidate continued" in out

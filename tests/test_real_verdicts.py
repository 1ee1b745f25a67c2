"""Calibrated verdicts on a real trained model (SmolLM2-135M-Instruct, `make model`): honest
low-precision candidates pass, the fixed tolerances they used to fail, and every named port
fault is found at its block and component. One reference per prompt, shared by its
candidates (the precision twin is measured once per dtype)."""
from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from parity.loading import fetch
from parity.options import RunOptions
from parity.run import compare_candidate, prepare_reference

# Each case runs the 30-block model several times (~12 min of CPU for the module): make test-all.
pytestmark = [pytest.mark.real, pytest.mark.slow]
PROMPTS = tomllib.loads((Path(__file__).parent / "data" / "prompts.toml").read_text())
REAL_DIR = fetch.model_dir("smollm2")
# (prompt, chat): a chat-wrapped short question, ~100 and ~500 tokens of plain text
INPUTS = [("short", True), ("medium", False), ("long", False)]
CLEAN = [("port", "fp32", {}), ("port", "fp16", {}), ("port", "bf16", {}),
         ("torch", "fp16", {"attn": "sdpa"}), ("torch", "bf16", {"attn": "sdpa"}), ("onnxruntime", "fp16", {})]


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """prompt name -> Reference, built on first use."""
    if not (REAL_DIR / "config.json").is_file():
        pytest.skip("SmolLM2 is not fetched: run `make model` (parity fetch smollm2)")
    here = fetch.model_dir("smollm2")  # this session's $PARITY_CACHE: link the fetched folder
    if here != REAL_DIR and not here.exists():
        here.parent.mkdir(parents=True, exist_ok=True)
        here.symlink_to(REAL_DIR, target_is_directory=True)
    return {}


def reference(refs: dict[str, Any], name: str, chat: bool = False) -> Any:
    if name not in refs:
        refs[name] = prepare_reference(RunOptions(model="smollm2", prompt=PROMPTS[name].strip(), chat=chat, device="cpu"))
    return refs[name]


def verdict(ref: Any, candidate: str, dtype: str, **kw: Any) -> dict[str, Any]:
    return compare_candidate(ref, replace(ref.options, candidate=candidate, dtype=dtype, **kw)).report.summary


# six candidates on three real prompts (ONNX exports at 526 tokens)
@pytest.mark.parametrize(("prompt", "chat"), INPUTS)
def test_honest_candidates_pass(references: dict[str, Any], prompt: str, chat: bool) -> None:
    ref = reference(references, prompt, chat)
    assert len(ref.ids) == {"short": 40, "medium": 108, "long": 526}[prompt]
    for candidate, dtype, kw in CLEAN:
        s = verdict(ref, candidate, dtype, **kw)
        assert s["verdict"] == "pass", f"{candidate} {dtype} {kw}: {s['message']}"
        assert s["tolerance"] == "calibrated" and s["largest_excess"]["excess"] <= s["budget"]


def test_fixed_tolerances_fail_the_same_honest_run(references: dict[str, Any]) -> None:
    """What calibration fixes: the preset's fixed fp16 table fails an honest fp16 port."""
    s = verdict(reference(references, "medium"), "port", "fp16", tolerance="absolute")
    assert s["verdict"] == "diverged" and s["probes_failed"] > 10
    assert s["first_divergence"]["classification"] == "accumulation"


@pytest.mark.parametrize(("fault", "block", "components", "named"), [
    ("double-rope", 0, {"attn", "rope"}, "rotary-twice"),
    ("silu-wrong-branch@15", 15, {"mlp"}, "activation-wrong-branch"),
    ("qkv-split@15", 15, {"attn"}, "permutation"),
    ("norm-eps", 0, {"norm"}, "norm-eps"),
    ("rope-base", None, {"rope"}, "rotary-base"),
])
def test_named_faults_are_found_in_fp16(references: dict[str, Any], fault: str, block: int | None,
                                         components: set[str], named: str) -> None:
    s = verdict(reference(references, "medium"), "port", "fp16", faults=[fault])
    diag = s["diagnosis"]
    assert s["verdict"] == "diverged" and s["first_divergence"]["classification"] == "step", s["message"]
    assert diag["block"] == block and diag["component"] in components, diag
    assert diag["named_cause"] == named, diag["hint"]  # the exact cause, on real activations


def test_a_bug_fp16_rounding_hides_shows_in_fp32(references: dict[str, Any]) -> None:
    """RMSNorm epsilon 0.1 in block 15, where the residual stream's RMS is ~7: in fp16 it is
    within rounding (excess < budget, correctly a pass); in fp32 it is a step at that norm."""
    ref = reference(references, "medium")
    assert verdict(ref, "port", "fp16", faults=["norm-eps@15"])["verdict"] == "pass"
    s = verdict(ref, "port", "fp32", faults=["norm-eps@15"])
    assert (s["first_divergence"]["probe"], s["first_divergence"]["classification"]) == ("blocks.15.attn_in", "step")
    assert s["diagnosis"]["named_cause"] == "norm-eps"
    assert s["diagnosis"]["hypotheses"][0]["params"]["eps"] == pytest.approx(0.1, rel=1e-2)

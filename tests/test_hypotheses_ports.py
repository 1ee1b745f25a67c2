"""An independently written port (tests/data/handwritten_port.py) with one porting bug per
hypothesis family: parity names the cause and recovers its parameter."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import save_file

from parity.loading.source import ModelSource
from parity.options import RunOptions
from parity.run import execute

PORT = Path(__file__).parent / "data" / "handwritten_port.py"

# (family, factory) -> (named cause, {param: value}, probe)
CASES: dict[tuple[str, str], tuple[str, dict[str, Any], str]] = {
    ("llama", "build_scale_1_over_d"): ("softmax-scale", {"recognized": "1/d (d=32)"}, "blocks.0.attn_out"),
    ("qwen2", "build_drop_q_bias"): ("bias", {"bias": "q_proj", "kind": "missing"}, "blocks.0.attn.q"),
    ("qwen", "build_drop_q_bias"): ("bias", {"bias": "c_attn[q]", "kind": "missing"}, "blocks.0.attn.q"),
    ("llama", "build_positions_plus_1"): ("rotary-shift", {"k": 1}, "rope.cos"),
    ("llama", "build_down_x1_5"): ("scale", {"recognized": "1.5"}, "blocks.0.mlp_out"),
    ("llama", "build_eps_outside_sqrt"): ("norm-eps-outside-root", {"eps": 1e-5}, "blocks.0.attn_in"),
    ("llama", "build_gelu"): ("activation-function", {"activation": "gelu"}, "blocks.0.mlp_out"),
    ("qwen", "build_gelu"): ("activation-function", {"activation": "gelu"}, "blocks.0.mlp_out"),
    ("llama", "build_transposed_q"): ("transposed-weight", {"projection": "attn.q"}, "blocks.0.attn.q"),
    ("qwen2", "build_q_heads_reversed"): ("permutation", {"mapping": ["q3", "q2", "q1", "q0"]}, "blocks.0.attn.q"),
    ("llama", "build_mask_shift"): ("mask-shift", {"shift": 1}, "blocks.0.attn_out"),
    ("llama", "build_interleaved_rope"): ("rotary-interleaved", {}, "rope.cos"),
    ("qwen2", "build_qk_pair_rows"): ("channel-permutation", {"layout": "pairs"}, "blocks.0.attn.q"),
}


_RUNS: dict[Any, dict[str, Any]] = {}


def run(model: str, factory: str, dtype: str, **kw: Any) -> dict[str, Any]:
    """The run's summary (memoized: the claims test reads the same runs)."""
    key = (model, factory, dtype, tuple(sorted(kw.items())))
    if key not in _RUNS:
        opts = RunOptions(model=model, candidate="port", port=f"{PORT}:{factory}", dtype=dtype, device="cpu",
                          tokens=kw.pop("tokens", 16), **kw)
        _RUNS[key] = execute(opts).report.summary
    return _RUNS[key]


def check(s: dict[str, Any], name: str, params: dict[str, Any], probe: str) -> dict[str, Any]:
    diag = s["diagnosis"]
    assert diag["named_cause"] == name, diag["hint"]
    assert diag["probe"] == probe
    win = diag["hypotheses"][0]
    assert win["fits"] and win["name"] == name
    for k, v in params.items():
        assert win["params"][k] == (pytest.approx(v, rel=1e-3) if isinstance(v, float) else v), win
    t = diag["targeted"]
    assert win["residual"] <= min(t["fit_tolerance"], 0.25 * t["identity_residual"])
    assert diag["hint"].startswith(win["cause"])
    return diag


@pytest.mark.parametrize(("model", "factory"), list(CASES))
def test_cause_named_fp32(model: str, factory: str) -> None:
    check(run(model, factory, "fp32"), *CASES[(model, factory)])


@pytest.mark.slow
@pytest.mark.parametrize(("model", "factory"), [k for k in CASES if k[1] != "build_eps_outside_sqrt"])
def test_cause_named_fp16(model: str, factory: str) -> None:
    check(run(model, factory, "fp16"), *CASES[(model, factory)])


def test_clean_port_passes() -> None:
    assert run("qwen2", "build_clean", "fp16")["verdict"] == "pass"


def test_eps_outside_root_is_a_step_born_at_the_norm() -> None:
    s = run("llama", "build_eps_outside_sqrt", "fp32", tokens=32)
    fd = s["first_divergence"]
    assert fd["classification"] == "step" and fd["born_at"] == "blocks.0.attn_in", s["message"]
    assert fd["probe"] != "blocks.0.attn_in"  # first over budget downstream: born earlier


def test_one_over_d_scale_token_0_matches() -> None:
    diag = run("llama", "build_scale_1_over_d", "fp32")["diagnosis"]
    assert diag["tokens"][0] == {"first": 0, "last": 0, "off": False} and diag["tokens"][1]["off"]
    assert any("token 0 match" in e for e in diag["evidence"])


def test_positions_plus_1_token_0_is_off() -> None:
    diag = run("llama", "build_positions_plus_1", "fp32")["diagnosis"]
    assert diag["tokens"] == [{"first": 0, "last": 15, "off": True}]
    assert "position 0" not in diag["hint"] or "start at 1" in diag["hint"]


@pytest.fixture(scope="module")
def qwen_seq16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The qwen preset with seq_length 16, so a 40-token prompt is past it (NTK and logN on)."""
    folder = tmp_path_factory.mktemp("qwen_seq16")
    src = ModelSource.resolve("qwen")
    m = src.build("cpu")
    cfg = {**src.config_dict, "model_type": "qwen", "seq_length": 16}
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


def test_logn_omitted_named_with_token_ranges(qwen_seq16: Path) -> None:
    s = run("qwen", "build_no_logn", "fp32", checkpoint=str(qwen_seq16), tokens=40)
    diag = check(s, "logn", {"logn": False, "seq_length": 16}, "blocks.0.attn.q_rot")
    assert diag["tokens"] == [{"first": 0, "last": 15, "off": False}, {"first": 16, "last": 39, "off": True}]
    assert any("tokens 0-15 match" in e and "seq_length 16" in e for e in diag["evidence"])


def test_clean_port_past_seq_length_passes(qwen_seq16: Path) -> None:
    assert run("qwen", "build_clean", "fp32", checkpoint=str(qwen_seq16), tokens=40)["verdict"] == "pass"


# The six wrong hints the issue lists, each on the independently written port: the wrong words
# must be gone, and whatever the hint claims must be what the evidence it prints shows.
MISDIAGNOSED = {
    ("llama", "build_scale_1_over_d"): ["position"],
    ("qwen2", "build_drop_q_bias"): ["fused qkv"],
    ("llama", "build_positions_plus_1"): ["position 0 always matches"],
    ("llama", "build_down_x1_5"): ["activation/gating", "wrong branch"],
    ("llama", "build_eps_outside_sqrt"): ["accumulation", "loosen"],
}


def claims_hold(s: dict[str, Any]) -> None:
    """Every claim of the hint checked against the evidence and numbers the report prints."""
    diag = s["diagnosis"]
    hint, evidence = diag["hint"], diag["evidence"]
    if diag.get("named_cause"):
        win = diag["hypotheses"][0]
        assert win["fits"] and win["name"] == diag["named_cause"] and hint.startswith(win["cause"])
        t = diag["targeted"]
        assert win["residual"] <= min(t["fit_tolerance"], 0.25 * t["identity_residual"])
        assert f"residual {win['residual']:.2g}" in hint and f"vs {t['identity_residual']:.2g}" in hint
        assert any(e.startswith("hypothesis tested") and win["name"] in e for e in evidence)
    for probe in re.findall(r"while (\S+) matched", hint):  # location hints: "X off while Y matched"
        assert any(e.startswith(f"blocks.{diag['block']}.{probe} matched") or e.startswith(f"{probe} matched")
                   for e in evidence), (probe, evidence)
    tokens = diag.get("tokens")
    if tokens:
        token0_off = tokens[0]["off"]
        if re.search(r"(token|position) 0 (always )?match", hint):
            assert not token0_off, (hint, tokens)
        if "at token 0" in hint and "right" in hint:
            assert not token0_off
    if s["first_divergence"].get("born_at"):
        assert diag["kind"] == "bug" and "accumulation" not in hint


@pytest.mark.parametrize(("model", "factory"), list(MISDIAGNOSED))
def test_issue_misdiagnoses_are_gone_and_claims_hold(model: str, factory: str) -> None:
    s = run(model, factory, "fp32")
    for words in MISDIAGNOSED[(model, factory)]:
        assert words not in s["diagnosis"]["hint"].lower(), s["diagnosis"]["hint"]
    claims_hold(s)


def test_logn_is_not_called_rotary_applied_twice(qwen_seq16: Path) -> None:
    s = run("qwen", "build_no_logn", "fp32", checkpoint=str(qwen_seq16), tokens=40)
    assert "applied twice" not in s["diagnosis"]["hint"]
    claims_hold(s)


def test_no_hypothesis_fits_falls_back_to_the_location_hint() -> None:
    """q perturbed element by element: nothing the registry knows; the hint says so, keeps
    the location-based guess, and that guess's claims hold."""
    s = run("llama", "build_q_noise", "fp32")
    diag = s["diagnosis"]
    assert diag["probe"] == "blocks.0.attn.q" and diag["named_cause"] is None
    assert diag["hint"].startswith("no tested hypothesis reproduces the candidate") and "by location" in diag["hint"]
    assert diag["hypotheses"] and not any(h["fits"] for h in diag["hypotheses"])
    claims_hold(s)


def test_built_in_fault_claims_hold() -> None:
    for fault, model in (("double-rope", "llama"), ("qkv-split", "qwen"), ("norm-eps@1", "llama")):
        opts = RunOptions(model=model, candidate="port", dtype="fp16", device="cpu", tokens=16, faults=[fault])
        claims_hold(execute(opts).report.summary)


def test_targeted_pass_keeps_only_the_probe_and_its_inputs() -> None:
    from parity.run.targeted import probes_for

    assert probes_for("blocks.2.mlp_out", 4) == ["rope.cos", "rope.sin", "blocks.2.mlp_in", "blocks.2.mlp_out"]
    assert "blocks.1.resid_post" in probes_for("blocks.2.attn_in", 4) and "embed" in probes_for("blocks.0.attn_in", 4)
    t = run("llama", "build_down_x1_5", "fp32")["diagnosis"]["targeted"]
    assert set(t["probes"]) <= {"rope.cos", "rope.sin", "blocks.0.mlp_in", "blocks.0.mlp_out"}
    assert t["mode"] == "forward, stopped after the last probe needed"  # a plain port: no teacher forcing
    assert t["capture_s"] >= 0 and t["hypotheses_s"] >= 0

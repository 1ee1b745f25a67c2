"""Calibrated verdicts: the precision twin, excess error, and what they change in verdicts
and diagnoses (parity.verdict.calibrate, parity.run.twin.measure_twin)."""
from __future__ import annotations

import csv
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import read_report
from parity.engines.port import runner as port
from parity.engines.torch import runner as pytorch
from parity.verdict.calibrate import DEFAULT_BUDGET, FP32_FLOOR_UNITS, MAX_ABS_SLACK, UNIT_ROUNDOFF, Calibration, Twin
from parity.errors import ParityError
from parity.options import RunOptions
from parity.run import compare_candidate, prepare_reference


def diff(nrmse: float, max_abs: float, mismatch: int = 0, passed: bool = True) -> SimpleNamespace:
    return SimpleNamespace(nrmse=nrmse, max_abs_err=max_abs, n_nonfinite_mismatch=mismatch, passed=passed)


# --------------------------------------------------------------------------- arithmetic


def test_excess_is_the_worse_ratio_over_the_floored_twin() -> None:
    u = UNIT_ROUNDOFF["float16"]
    twin = Twin("float16", "measured", "t", {"a": diff(2e-3, 0.01), "b": diff(0.0, 0.0)})
    cal = Calibration("calibrated", "float16", 4.0, twin)
    x = cal.excess("a", diff(4e-3, 0.09), ref_abs_max=3.0)
    assert (x.nrmse_ratio, x.max_abs_ratio) == pytest.approx((2.0, 9.0))
    assert x.value == pytest.approx(max(2.0, 9.0 / MAX_ABS_SLACK))
    worst = 4.0 * MAX_ABS_SLACK * 0.01  # the largest max abs error the budget allows
    assert cal.judge("a", diff(4e-3, worst * 0.99), 3.0) and not cal.judge("a", diff(4e-3, worst * 1.01), 3.0)
    assert not cal.judge("a", diff(9e-3, 0.01), 3.0)  # nrmse x4.5 > 4
    assert cal.allowed_abs(twin.diffs["a"], 3.0) == pytest.approx(worst)
    # a probe the twin reproduces exactly (rotary tables in float32) is judged against one rounding
    x = cal.excess("b", diff(u, u * 5.0), ref_abs_max=5.0)
    assert (x.nrmse_ratio, x.max_abs_ratio, x.value) == pytest.approx((1.0, 1.0, 1.0))
    # non-finite where the reference is finite always fails, whatever the ratios
    assert not cal.judge("a", diff(0.0, 0.0, mismatch=1), 3.0)
    assert cal.excess("a", diff(math.inf, math.inf), 3.0).value == math.inf


def test_float32_floor_and_absolute_mode() -> None:
    cal = Calibration("calibrated", "float32", twin=Twin("float32", "reference", "ref"))
    assert cal.floor == UNIT_ROUNDOFF["float32"] * FP32_FLOOR_UNITS
    assert cal.excess("x", diff(cal.floor * 3, 0.0), 1.0).value == pytest.approx(3.0)
    absolute = Calibration("absolute")
    assert absolute.excess("x", diff(1.0, 1.0), 1.0) is None
    assert absolute.judge("x", diff(1.0, 1.0, passed=True), 1.0) and not absolute.judge("x", diff(0, 0, passed=False), 1.0)
    assert DEFAULT_BUDGET == Calibration().budget


@pytest.mark.parametrize(("args", "words"), [
    (["--tolerance", "calibrated", "--atol", "1e-3"], "--tolerance calibrated"),
    (["--budget", "0.5"], "--budget 0.5"),
    (["--budget", "nan"], "--budget nan"),
    (["--tolerance", "absolute", "--budget", "4"], "--budget applies to calibrated"),
])
def test_verdict_options_that_do_not_fit_are_usage_errors(args: list[str], words: str, run_cli, tmp_path: Path) -> None:
    code, out, err = run_cli("run", "--model", "llama", "--tokens", "4", "-q", "--out", str(tmp_path / "r"), *args)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- runs


def test_torch_candidate_in_the_twins_configuration_is_the_twin(run_cli, tmp_path: Path) -> None:
    code, out, err = run_cli("run", "--model", "qwen", "--tokens", "8", "--out", str(tmp_path))
    rep = read_report(tmp_path)
    assert code == 0, out
    v = rep["run"]["verdict"]
    assert v["mode"] == "calibrated" and v["twin"]["state"] == "candidate" and "skipped" in v["twin"]["label"]
    assert "precision twin" not in err  # no second forward
    assert all(p["excess"] <= 1.0 for p in rep["probes"] if p["passed"] is not None)
    assert rep["schema_version"] == "1.2" and rep["run"]["tolerances"] is None


def test_port_fp16_passes_against_a_measured_twin(run_cli, tmp_path: Path) -> None:
    code, out, err = run_cli("run", "--model", "llama", "--candidate", "port", "--tokens", "16", "--out", str(tmp_path))
    rep = read_report(tmp_path)
    assert code == 0, out
    assert rep["run"]["verdict"]["twin"]["state"] == "measured" and "precision twin (float16)" in err
    compared = [p for p in rep["probes"] if p["passed"] is not None]
    assert compared and all(p["twin_nrmse"] is not None and p["twin_max_abs_err"] is not None for p in compared)
    assert all(p["excess"] <= DEFAULT_BUDGET and p["atol"] is None for p in compared)
    assert any(p["isolated_excess"] is not None for p in compared)
    with open(tmp_path / "probes.csv") as fh:
        assert {"excess", "twin_nrmse", "twin_max_abs_err"} <= set(next(csv.DictReader(fh)))
    assert "PASSED" in out and "precision twin" in out


def _scaled_down_proj(scale: float):  # noqa: ANN202
    def create(ctx):  # noqa: ANN001, ANN202
        backend = pytorch.create(ctx)
        with torch.no_grad():
            backend.model.model.layers[3].mlp.down_proj.weight.mul_(scale)
        return backend
    return create


def test_small_bug_named_where_it_is_calibrated_but_not_absolute() -> None:
    """A 2% weight error in block 3's MLP (fp16): the calibrated verdict fails at that very
    probe as a step, and names the scale; the fixed fp16 tolerances see it two probes later,
    and step detection at the first probe whose input matched traces it back to
    where it is born."""
    base = RunOptions(model="llama", tokens=16, device="cpu")
    ref = prepare_reference(base)
    cal = compare_candidate(ref, base, create=_scaled_down_proj(1.02)).report.summary
    assert cal["first_divergence"]["probe"] == "blocks.3.mlp_out"
    assert cal["first_divergence"]["classification"] == "step"
    absolute = compare_candidate(ref, replace(base, tolerance="absolute"), create=_scaled_down_proj(1.02)).report.summary
    assert cal["diagnosis"]["named_cause"] == "scale"
    assert cal["diagnosis"]["hypotheses"][0]["params"]["factor"] == pytest.approx(1.02, rel=2e-3)
    assert absolute["first_divergence"]["probe"] != "blocks.3.mlp_out"
    assert absolute["first_divergence"]["classification"] == "step"
    assert absolute["first_divergence"]["born_at"] == "blocks.3.mlp_out"


def test_bf16_attention_scale_in_fp32_is_a_step_at_attention() -> None:
    """fp32 candidate whose softmax scale is 1/sqrt(d) rounded to bfloat16 (Qwen v1's bug in
    the clean-room): 1e-4 relative -- the float32 floor catches it where it is born."""
    base = RunOptions(model="llama", tokens=16, device="cpu", dtype="fp32")
    ref = prepare_reference(base)

    def create(ctx):  # noqa: ANN001, ANN202
        backend = pytorch.create(ctx)
        for layer in backend.model.model.layers:
            layer.self_attn.scaling = 1.0 / float(torch.tensor(math.sqrt(layer.self_attn.head_dim), dtype=torch.bfloat16))
        return backend

    s = compare_candidate(ref, base, create=create).report.summary
    assert (s["first_divergence"]["probe"], s["first_divergence"]["classification"]) == ("blocks.0.attn_out", "step")
    assert "float32 floor" in s["message"]
    a = compare_candidate(ref, replace(base, tolerance="absolute"), create=create).report.summary
    assert a["first_divergence"]["probe"] != "blocks.0.attn_out"


def test_norm_eps_is_a_step_at_the_norm() -> None:
    from parity.run import execute

    s = execute(RunOptions(model="llama", candidate="port", tokens=8, device="cpu", faults=["norm-eps@3"])).report.summary
    fd, diag = s["first_divergence"], s["diagnosis"]
    assert (fd["probe"], fd["classification"]) == ("blocks.3.attn_in", "step")
    assert (diag["cause"], diag["block"]) == ("norm-eps", 3)


def test_lower_precision_everywhere_is_accumulation_not_a_bug() -> None:
    """Every linear output of an fp16 candidate rounded to bfloat16 (excess ~3.7 everywhere,
    within the default budget of 4), judged with --budget 2: each block is worse than an
    honest fp16 run on its own, none stands out -- precision, not a culprit block."""
    base = RunOptions(model="llama", tokens=16, device="cpu", budget=2.0)
    ref = prepare_reference(base)

    def create(ctx):  # noqa: ANN001, ANN202
        backend = pytorch.create(ctx)
        for m in backend.model.modules():
            if isinstance(m, nn.Linear):
                m.register_forward_hook(lambda mod, a, out: out.to(torch.bfloat16).to(out.dtype))
        return backend

    s = compare_candidate(ref, base, create=create).report.summary
    assert s["verdict"] == "diverged" and s["first_divergence"]["classification"] == "accumulation"
    diag = s["diagnosis"]
    assert diag["cause"] == "accumulation" and "faster than an honest" in diag["hint"]
    assert any("blocks are over" in e for e in diag["evidence"])


# --------------------------------------------------------------------------- twin independence


def test_twin_is_built_from_the_reference_only() -> None:
    """A candidate that writes into the weights it was given and patches the reference's
    modules cannot change the twin's numbers; a later twin from those weights is refused."""
    base = RunOptions(model="llama", tokens=8, device="cpu", candidate="port")
    clean = compare_candidate(prepare_reference(base), base).report

    def hostile(ctx):  # noqa: ANN001, ANN202
        ref_model = ctx.reference_model
        with torch.no_grad():
            ref_model.model.layers[1].mlp.down_proj.weight.mul_(3.0)  # shared with the state dict
        ref_model.model.layers[0].mlp.forward = lambda x: torch.zeros_like(x)
        return port.create(ctx)

    ref = prepare_reference(base)
    bad = compare_candidate(ref, base, create=hostile).report
    twin = {r.name: (r.twin_nrmse, r.twin_max_abs_err) for r in bad.probes if r.compared}
    assert twin == {r.name: (r.twin_nrmse, r.twin_max_abs_err) for r in clean.probes if r.compared}
    assert bad.summary["verdict"] == "diverged" and bad.summary["first_divergence"]["block"] == 1
    with pytest.raises(ParityError, match="weights changed"):
        compare_candidate(ref, replace(base, dtype="bf16"))


def test_twin_is_measured_once_per_dtype() -> None:
    base = RunOptions(model="llama", tokens=8, device="cpu", candidate="port")
    ref = prepare_reference(base)
    compare_candidate(ref, base)
    compare_candidate(ref, replace(base, faults=["silu-wrong-branch@1"]))
    compare_candidate(ref, replace(base, dtype="bf16"))
    assert sorted(k[0] for k in ref.twins) == ["bfloat16", "float16"]


# --------------------------------------------------------------------------- generation


def test_generation_steps_are_judged_against_the_twin(run_cli, tmp_path: Path) -> None:
    code, out, _ = run_cli("generate", "--model", "llama", "--candidate", "port", "--max-new-tokens", "4",
                           "--tokens", "8", "-q", "--out", str(tmp_path))
    g = read_report(tmp_path)["generation"]
    assert code == 0, out
    assert g["tolerance"] == "calibrated" and g["logits_tolerance"] is None and "fed the reference" in g["twin"]
    steps = [s for s in g["steps"] if s["comparable"]]
    assert steps and all(s["excess"] is not None and s["excess"] <= DEFAULT_BUDGET for s in steps)
    assert all(s["twin_max_abs_err"] > 0 for s in steps)

"""Quantized candidates (ModelOpt fake quantization): scheme checks before any model, the
canonical unit names, exclusion and toggling, the budget verdict, attribution and the
sensitivity sweep -- on the tiny seeded llama preset (fast) and on the real SmolLM2 (real, slow)."""
from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import pytest

from parity.engines import schemes
from parity.errors import UsageError
from parity.options import RunOptions

needs_modelopt = pytest.mark.skipif(importlib.util.find_spec("modelopt") is None,
                                    reason="needs NVIDIA ModelOpt: pip install 'parity-debugger[quant]'")


# -- no model ----------------------------------------------------------------------------------

def test_unknown_scheme_is_exit_2_naming_the_choices(run_cli) -> None:
    code, out, err = run_cli("run", "--model", "llama", "--candidate", "quant", "--quant", "int3-wo", "--no-files")
    assert code == 2
    assert "unknown quantization scheme 'int3-wo'" in err and "int8-wo" in err and err.count("\n") == 1


def test_cuda_only_scheme_on_cpu_is_exit_2_saying_it_needs_cuda(run_cli) -> None:
    code, _, err = run_cli("run", "--model", "llama", "--candidate", "quant", "--quant", "nvfp4", "--device", "cpu", "--no-files")
    assert code == 2
    assert "scheme 'nvfp4' needs CUDA" in err and err.count("\n") == 1


@pytest.mark.parametrize("args, text", [
    (["--candidate", "quant"], "--candidate quant needs --quant SCHEME"),
    (["--quant", "int8-wo"], "--quant needs --candidate quant"),
    (["--candidate", "quant", "--quant", "int8-wo", "--quant-budget", "0"], "--quant-budget 0.0"),
    (["--quant-twin", "int5"], "--quant-twin int5: not a twin"),
])
def test_quant_options_are_checked_before_any_model(run_cli, args: list[str], text: str) -> None:
    code, _, err = run_cli("run", "--model", "llama", "--no-files", *args)
    assert code == 2 and text in err


def test_sweep_refuses_an_unknown_scheme_before_any_model(run_cli) -> None:
    code, _, err = run_cli("quant-sweep", "--model", "smollm2", "--schemes", "int8-wo,fp7", "-q")
    assert code == 2 and "unknown quantization scheme 'fp7'" in err


def test_units_use_the_canonical_vocabulary() -> None:
    pytest.importorskip("torch")
    from parity.engines.quant import block_pattern, unit_of

    blocks = block_pattern("model.layers.{i}")
    assert unit_of("model.layers.3.self_attn.q_proj.weight_quantizer", blocks) == "blocks.3.attn.q_proj"
    assert unit_of("model.layers.12.mlp.down_proj.input_quantizer", blocks) == "blocks.12.mlp.down_proj"
    assert unit_of("model.layers.0.self_attn.k_bmm_quantizer", blocks) == "blocks.0.kv.k"
    assert unit_of("lm_head.weight_quantizer", blocks) == "lm_head"
    assert schemes.unit_matches("blocks.0.attn.q_proj", ["blocks.0.*"])
    assert schemes.unit_matches("blocks.7.kv.v", ["blocks.*.kv"])
    assert not schemes.unit_matches("blocks.10.mlp.up_proj", ["blocks.1"])


def test_cpu_schemes_and_the_sweep_are_known() -> None:
    assert set(schemes.SWEEP) <= set(schemes.SCHEMES)
    assert [n for n, s in schemes.SCHEMES.items() if s.needs_cuda] == ["nvfp4"]
    with pytest.raises(UsageError, match="needs CUDA"):
        schemes.check_device(schemes.get("nvfp4"), "cpu")
    schemes.check_device(schemes.get("fp8"), "cpu")  # FP8 rounds through torch.float8_e4m3fn on CPU


# -- the tiny seeded llama (ModelOpt) ------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_ref():
    pytest.importorskip("modelopt")
    from parity.run.reference import prepare_reference

    return prepare_reference(RunOptions(model="llama", device="cpu", tokens=24))


def _run(ref, **kw):
    from parity.run.candidate import compare_candidate

    return compare_candidate(ref, replace(ref.options, candidate="quant", **kw)).report


@needs_modelopt
def test_int4_costs_more_than_int8_and_both_are_attributed(tiny_ref) -> None:
    r8, r4 = _run(tiny_ref, quant="int8-wo"), _run(tiny_ref, quant="int4-wo")
    e8, e4 = r8.row("logits").nrmse, r4.row("logits").nrmse
    assert 0 < e8 < e4
    for r in (r8, r4):
        q = r.summary["quant"]
        assert q["mode"] == "budget" and q["logits_nrmse"] == r.row("logits").nrmse
        assert r.summary["verdict"] == ("pass" if q["logits_nrmse"] <= q["budget"] else "diverged")
        att = q["attribution"]
        assert sorted(att["ranked_blocks"]) == list(range(tiny_ref.source.num_blocks))
        top = att["ranked_blocks"][0]
        assert att["blocks"][top]["resid_post"] == max(b["resid_post"] for b in att["blocks"])
        assert r.summary["diagnosis"]["cause"] == "quantization"
    assert r8.run["candidate"]["quant"]["quantizers"]["attn"] > 0


@needs_modelopt
def test_budget_override_decides_the_verdict(tiny_ref) -> None:
    err = _run(tiny_ref, quant="int8-wo").row("logits").nrmse
    assert _run(tiny_ref, quant="int8-wo", quant_budget=err * 2).summary["verdict"] == "pass"
    failed = _run(tiny_ref, quant="int8-wo", quant_budget=err / 2)
    assert failed.summary["verdict"] == "diverged" and failed.summary["message"].startswith("FAILED | quant int8-wo")


@needs_modelopt
@pytest.mark.parametrize("factor", [2.0, 0.5], ids=["within", "over"])
def test_rows_verdict_badge_and_heatmap_agree(tiny_ref, factor: float) -> None:
    """A budget verdict: every compared row is judged by its nrmse against the same budget, so
    no row reads FAIL under PASSED; the HTML badge and heatmap say what the verdict says."""
    from parity.report import charts, html

    err = _run(tiny_ref, quant="int8-wo").row("logits").nrmse
    r = _run(tiny_ref, quant="int8-wo", quant_budget=err * factor)
    budget = r.summary["quant"]["budget"]
    compared = [p for p in r.probes if p.status in ("pass", "fail")]
    assert compared and all((p.status == "pass") == (p.nrmse <= budget) for p in compared)
    assert r.row("logits").status == ("pass" if r.summary["verdict"] == "pass" else "fail")
    assert r.summary["probes_failed"] == sum(p.status == "fail" for p in compared)
    fd = r.summary["first_divergence"]
    assert (fd is None) == all(p.status == "pass" for p in compared)
    heat = charts.heatmap(r)
    assert heat.mode == "nrmse" and heat.budget == budget
    cells = [c for by_block in heat.cells.values() for c in by_block.values()]
    assert all(c["status"] == r.row(c["name"]).status for c in cells)
    page = html.render(r)
    assert f'class="badge {"pass" if r.summary["verdict"] == "pass" else "fail"}"' in page
    assert "nrmse against the scheme budget" in page
    assert "twin is attribution" in r.summary["message"]


@needs_modelopt
def test_excluding_every_block_leaves_nothing_to_quantize(tiny_ref) -> None:
    from parity.errors import BackendError

    with pytest.raises(BackendError, match="quantized nothing"):
        _run(tiny_ref, quant="int8-wo", quant_exclude=["blocks.*"])
    with pytest.raises(UsageError, match="matches no quantized unit"):
        _run(tiny_ref, quant="int8-wo", quant_exclude=["blocks.99.*"])


@needs_modelopt
@pytest.mark.parametrize("scheme", ["int8-wo", "int8-kv"])
def test_toggling_one_block_equals_excluding_all_others(tiny_ref, scheme: str) -> None:
    """The sensitivity sweep toggles quantizers of a fully quantized model; that must equal
    quantizing block 0 alone (exclusion at quantize time)."""
    import torch

    from parity.engines import quant

    src, spec = tiny_ref.source, tiny_ref.probe_map.block_spec()
    calib, _ = quant.calibration_ids(src)
    blocks = quant.block_pattern(spec.module)
    full, _ = quant.quantized_reference(tiny_ref.model, scheme, dtype="fp32", device="cpu", block_module=spec.module,
                                        calibration=calib)
    others = [f"blocks.{i}" for i in range(1, src.num_blocks)]
    only0, _ = quant.quantized_reference(tiny_ref.model, scheme, dtype="fp32", device="cpu", block_module=spec.module,
                                         calibration=calib, exclude=others)
    quant.set_enabled(quant.quantizers(full, blocks), lambda u: u.startswith("blocks.0."))
    ids = torch.tensor([tiny_ref.ids])
    with torch.no_grad():
        a, b, ref = full(input_ids=ids).logits, only0(input_ids=ids).logits, tiny_ref.model(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-5, rtol=0)
    assert not torch.allclose(a, ref, atol=1e-5, rtol=0)  # block 0 is quantized


@needs_modelopt
def test_kv_quantizers_see_the_whole_cache_at_decode_steps(tiny_ref) -> None:
    """int8-kv in generation (parity eval, generate): at a cached decode step the k quantizer
    receives every cached position, so the cache is read quantized (static per-tensor scale)."""
    from parity.engines import quant
    from parity.run.decode import Stepper

    spec = tiny_ref.probe_map.block_spec()
    calib, _ = quant.calibration_ids(tiny_ref.source)
    model, facts = quant.quantized_reference(tiny_ref.model, "int8-kv", dtype="fp32", device="cpu",
                                             block_module=spec.module, calibration=calib)
    assert set(facts["quantizers"]) == {"kv"}
    seen: list[int] = []
    first = next(m for n, m in model.named_modules() if n.endswith("k_bmm_quantizer"))
    first.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[-2]))
    with Stepper(model) as st:
        st.step(int(st.prefill([5, 6, 7, 8]).argmax()))
    assert seen == [4, 5]


@needs_modelopt
def test_sensitivity_sweep_and_html(tiny_ref, tmp_path: Path) -> None:
    pytest.importorskip("jinja2")
    from parity.report import html

    r = _run(tiny_ref, quant="int4-wo", quant_sensitivity=True)
    sens = r.summary["quant"]["sensitivity"]
    nb = tiny_ref.source.num_blocks
    assert [b["block"] for b in sens["blocks"]] == list(range(nb))
    assert set(sens["kinds"]) == {"attn", "mlp"} and sens["all"]["logits_nrmse"] == pytest.approx(r.row("logits").nrmse, rel=0.05)
    assert all(b["logits_nrmse"] < sens["all"]["logits_nrmse"] * 1.5 for b in sens["blocks"])
    agree = r.summary["quant"]["agreement"]
    assert agree["isolated_top"] in range(nb) and agree["sensitivity_top"] in range(nb)
    page = html.render(r)
    assert 'id="quant"' in page and "Sensitivity" in page and page.count("<rect") >= 3 * nb


@needs_modelopt
def test_quant_twin_judges_the_scheme_against_itself(tiny_ref) -> None:
    """--quant-twin S: the twin is the reference fake-quantized with S; the quant candidate
    running S is then within the usual budget of it, while the plain fp16 twin calls it over."""
    r = _run(tiny_ref, quant="int8-wo", quant_twin="int8-wo")
    assert r.summary["quant"]["mode"] == "quant-twin"
    assert r.summary["verdict"] == "pass", r.summary["message"]
    assert "fake-quantized with int8-wo (ModelOpt)" in r.run["verdict"]["twin"]["label"]


@needs_modelopt
def test_cli_run_writes_the_quant_section(run_cli, tmp_path: Path) -> None:
    code, out, _ = run_cli("run", "--model", "llama", "--device", "cpu", "--candidate", "quant", "--quant", "int8-wo",
                           "--quant-exclude", "blocks.0.*", "-q", "--out", str(tmp_path))
    assert code in (0, 1)
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["run"]["candidate"]["quant"]["excluded"] == ["blocks.0.*"]
    assert rep["summary"]["quant"]["scheme"] == "int8-wo" and "quant int8-wo" in out


# -- the real SmolLM2 (make test-all) -----------------------------------------------------------

@needs_modelopt
@pytest.mark.real
@pytest.mark.slow
def test_real_sweep_int4_costs_more_than_int8(run_cli, tmp_path: Path) -> None:
    from parity.loading import fetch

    real = fetch.model_dir("smollm2")
    orig = Path.home() / ".cache" / "parity" / "models" / "smollm2"
    if not (real / "config.json").is_file():
        if not (orig / "config.json").is_file():
            pytest.skip("SmolLM2 is not fetched: run `make model` (parity fetch smollm2)")
        real.parent.mkdir(parents=True, exist_ok=True)
        real.symlink_to(orig, target_is_directory=True)
    code, out, _ = run_cli("quant-sweep", "--model", "smollm2", "--device", "cpu", "--schemes", "int8-wo,int4-wo",
                           "--prompt", "The library now lends telescopes, sewing machines and power tools.",
                           "--no-rouge", "-q", "--out", str(tmp_path))
    doc = json.loads((tmp_path / "sweep.json").read_text())
    assert code == (1 if any(r.get("verdict") == "diverged" for r in doc["table"]) else 0)  # exit 1: over budget
    rows = {r["scheme"]: r for r in doc["table"]}
    assert set(rows) == {"fp16 (twin)", "int8-wo", "int4-wo"}
    assert rows["fp16 (twin)"]["logits_nrmse"] < rows["int8-wo"]["logits_nrmse"] < rows["int4-wo"]["logits_nrmse"]
    assert len(rows["int4-wo"]["sensitive_blocks"]) == 3 and len(rows["int4-wo"]["isolated_blocks"]) == 3
    assert rows["int4-wo"]["excess_over_twin"] > rows["int8-wo"]["excess_over_twin"] > 1
    assert "not measured" in doc["latency"] and "int4-wo" in (tmp_path / "sweep.csv").read_text()

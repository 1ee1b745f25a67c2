"""The generic explanations on synthetic tensors: tensor identity search, the rotary formula,
attention / MLP / norm variants, the error structure when nothing fits, and the wording of the
base, bias, q/k exchange and norm-scale hints."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from parity.verdict import named
from parity.verdict.hypotheses import evaluate
from parity.verdict.hypotheses.knobs import formula
from parity.verdict.hypotheses.rotary import freqs_for_base, rotate, table
from test_hypotheses import D, H, NKV, NQ, T, _attention, _rope, ev, rnd, winner


def test_identity_names_a_dropped_add_and_a_doubled_one() -> None:
    x, a = rnd(T, H), rnd(T, H)
    ref = {"blocks.0.resid_post": x, "blocks.1.attn_out": a, "blocks.1.resid_mid": x + a}
    w = winner(ev("resid_mid", ref, {"blocks.1.resid_mid": a}, block=1))
    assert w.name == "tensor-identity" and w.params["label"] == "expr:blocks.1.attn_out"
    assert "attn_out" in w.cause and "wire crossed" in w.cause
    w = winner(ev("resid_mid", ref, {"blocks.1.resid_mid": 2 * x}, block=1))
    assert w.params["label"] == "expr:2*blocks.0.resid_post"


def test_identity_names_the_norm_of_the_wrong_stream() -> None:
    a, r, w = rnd(T, H), rnd(T, H), 1 + 0.1 * rnd(H)
    nrm = lambda x: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w  # noqa: E731
    ref = {"blocks.0.mlp_out": a, "blocks.0.resid_mid": r, "blocks.0.resid_post": a + r, "blocks.1.attn_in": nrm(a + r)}
    got = winner(ev("attn_in", ref, {"blocks.1.attn_in": nrm(a)}, block=1, weights={"norm.weight": w, "norm.eps": 1e-5}))
    assert got.params["label"] == "expr:norm(blocks.0.mlp_out)"


def test_identity_does_not_name_an_unrelated_error() -> None:
    x, a = rnd(T, H), rnd(T, H)
    ref = {"blocks.0.resid_post": x, "blocks.1.attn_out": a, "blocks.1.resid_mid": x + a}
    results = evaluate(ev("resid_mid", ref, {"blocks.1.resid_mid": x + a + 0.3 * rnd(T, H)}, block=1))
    assert not any(r.fits for r in results)


@pytest.mark.parametrize("abr", [("sin", "cos", "rh"), ("cos", "0", "rh"), ("cos", "sin", "-rh"), ("cos", "sin", "swap")])
def test_rotary_formula_on_q_rot(abr: tuple[str, str, str]) -> None:
    q = rnd(T, NQ, D)
    cos, sin = _rope()
    ref = {"rope.cos": cos, "rope.sin": sin, "blocks.0.attn.q": q, "blocks.0.attn.q_rot": rotate(q, cos, sin)}
    w = winner(ev("attn.q_rot", ref, {"blocks.0.attn.q_rot": formula(q, cos, sin, *abr)}))
    assert w.name == "rotary-formula" and w.params["label"] == "rot:" + ",".join(abr)


def _att_ref() -> tuple[dict, torch.Tensor, tuple]:
    q, k, v, wo = rnd(T, NQ, D), rnd(T, NKV, D), rnd(T, NKV, D), rnd(H, NQ * D) / 8
    cos, sin = _rope()
    qr, kr = rotate(q, cos, sin), rotate(k, cos, sin)
    ref = {"rope.cos": cos, "rope.sin": sin, "blocks.0.attn.q": q, "blocks.0.attn.k": k, "blocks.0.attn.v": v,
           "blocks.0.attn_out": _attention(qr, kr, v, wo)}
    return ref, wo, (qr, kr, v)


@pytest.mark.parametrize("variant", ["key=value", "softmax-axis", "o_proj-skipped", "tiled-v"])
def test_attention_variants_by_operand_axis_and_projection(variant: str) -> None:
    ref, wo, (qr, kr, v) = _att_ref()
    rep = NQ // NKV
    kk, vv = kr.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = torch.einsum("thd,shd->hts", qr, kk) / math.sqrt(D)
    hide = ~torch.ones(T, T, dtype=torch.bool).tril()
    if variant == "key=value":
        cand, label = _attention(qr, v, v, wo), "attn:q,v,v"
    elif variant == "tiled-v":
        p = torch.softmax(s.masked_fill(hide, float("-inf")), -1)
        cand, label = torch.einsum("hts,shd->thd", p, v.repeat(1, rep, 1)).reshape(T, -1) @ wo.T, "gqa-tiled:v"
    else:
        p = torch.softmax(s.masked_fill(hide, float("-inf")), -2 if variant == "softmax-axis" else -1)
        ctx = torch.einsum("hts,shd->thd", p, vv).reshape(T, -1)
        cand, label = (ctx @ wo.T, "softmax-axis") if variant == "softmax-axis" else (ctx, "o_proj-skipped")
    if cand.shape[-1] != H:
        pytest.skip("context width differs from hidden here")
    w = winner(ev("attn_out", ref, {"blocks.0.attn_out": cand}, weights={"o_proj.weight": wo}))
    assert w.params["label"] == label, w.cause


@pytest.mark.parametrize(("form", "label"), [("g*g", "mlp:act(g)*g"), ("none", "act:none"), ("sigmoid", "act:sigmoid")])
def test_mlp_forms(form: str, label: str) -> None:
    x, gate, up, down = rnd(T, H), rnd(40, H) / 8, rnd(40, H) / 8, rnd(H, 40) / 8
    g, u = x @ gate.T, x @ up.T
    c = {"g*g": F.silu(g) * g, "none": g * u, "sigmoid": torch.sigmoid(g) * u}[form] @ down.T
    e = ev("mlp_out", {"blocks.0.mlp_in": x, "blocks.0.mlp_out": (F.silu(g) * u) @ down.T}, {"blocks.0.mlp_out": c},
           weights={"mlp.up": [gate, up], "mlp.down": down, "mlp.names": ["gate_proj", "up_proj"]})
    got = winner(e)
    assert got.params.get("label", f"act:{got.params.get('activation')}") == label


@pytest.mark.parametrize(("form", "label"), [("x*rms", "norm-formula:x*rms"), ("tokens", "norm-axis:tokens")])
def test_norm_forms(form: str, label: str) -> None:
    x, w, eps = rnd(T, H), 1 + 0.1 * rnd(H), 1e-5
    ref = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
    c = {"x*rms": x * torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w,
         "tokens": x * torch.rsqrt(x.pow(2).mean(0, keepdim=True) + eps) * w}[form]
    got = winner(ev("mlp_in", {"blocks.0.resid_mid": x, "blocks.0.mlp_in": ref}, {"blocks.0.mlp_in": c},
                    weights={"norm.weight": w, "norm.eps": eps}))
    assert got.params["label"] == label


def test_error_structure_when_nothing_fits() -> None:
    q = rnd(T, NQ, D)
    c = q.clone()
    c[5:, 2] += 0.5 * rnd(T - 5, D)  # head 2 from token 5 on, nothing any hypothesis models
    e = ev("attn.q", {"blocks.0.attn.q": q}, {"blocks.0.attn.q": c})
    diag = {"hint": "layout: by location", "evidence": []}
    named.apply(diag, evaluate(e), e, "forward", {})
    assert diag["named_cause"] is None
    assert diag["error_structure"]["heads"] == [2] and diag["error_structure"]["from_token"] == 5
    assert "head(s) 2 of 4" in diag["hint"] and "tokens before 5 match" in diag["hint"] and "by location" in diag["hint"]
    assert any(x.startswith("ruled out at") for x in diag["evidence"])


def test_offset_where_the_reference_has_no_bias_is_an_extra_bias() -> None:
    r = rnd(T, H)
    w = winner(ev("mlp_out", {"blocks.0.mlp_out": r}, {"blocks.0.mlp_out": r + rnd(1, H)}))
    assert w.name == "bias" and w.cause.startswith("an extra bias") and "missing or extra" not in w.cause


def test_q_k_exchange_on_separate_projections_is_not_a_fused_weight() -> None:
    q, k, v = rnd(T, NQ, D), rnd(T, NQ, D), rnd(T, NQ, D)
    ref = {"blocks.0.attn.q": q, "blocks.0.attn.k": k, "blocks.0.attn.v": v}
    sep = {f"attn.{x}.weight": rnd(NQ * D, H) for x in "qkv"}
    w = winner(ev("attn.q", ref, {"blocks.0.attn.q": k}, weights=sep, facts={"num_kv_heads": NQ}))
    assert "fused weight" not in w.cause and "q holds the reference's k heads" in w.cause
    w = winner(ev("attn.q", ref, {"blocks.0.attn.q": k}, facts={"num_kv_heads": NQ}))  # a fused c_attn (Qwen v1)
    assert "fused weight stacked k|q|v" in w.cause


def test_rotary_base_against_the_ntk_scaled_reference() -> None:
    """The reference's table is NTK-scaled (past seq_length); the candidate used the config's base:
    named against the scaled base, never 'base b instead of b (x1)'."""
    q, base = rnd(T, NQ, D), 10000.0
    scaled = base * 3 ** (D / (D - 2))
    cos, sin = table(torch.arange(T, dtype=torch.float64), freqs_for_base(scaled, D))
    ref = {"rope.cos": cos, "rope.sin": sin, "blocks.0.attn.q": q, "blocks.0.attn.q_rot": rotate(q, cos, sin)}
    cand = rotate(q, *table(torch.arange(T, dtype=torch.float64), freqs_for_base(base, D)))
    results = evaluate(ev("attn.q_rot", ref, {"blocks.0.attn.q_rot": cand}))
    w = results[0]
    assert w.fits and w.name in ("rotary-base", "ntk"), [(r.name, r.residual) for r in results[:3]]
    if w.name == "rotary-base":
        assert "dynamic NTK not applied" in w.cause and w.params["reference_base"] == pytest.approx(scaled, rel=1e-4)
    for r in results:
        if r.name == "rotary-base":
            assert "(x1)" not in r.cause


def test_norm_scale_span_never_reads_1_to_1() -> None:
    from parity.verdict.diagnose import _span

    assert _span(0.99999, 1.00001) == "0.99999..1.00001" and "1..1" not in _span(1.0 - 1e-7, 1.0 + 1e-7)

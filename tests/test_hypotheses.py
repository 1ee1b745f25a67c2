"""Each hypothesis on synthetic tensors: the transformation applied to a reference is named
with its parameter recovered; an untransformed candidate or an unrelated error is not
explained; the registry takes user hypotheses and survives a broken one."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from parity.verdict import named
from parity.verdict.hypotheses import HYPOTHESES, Result, hypothesis, residual, summary, evaluate
from parity.verdict.hypotheses.core import Evidence
from parity.verdict.hypotheses.rotary import freqs_for_base, rotate, table

T, H, NQ, NKV, D = 12, 64, 4, 2, 16
G = torch.Generator().manual_seed(0)


def rnd(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=G, dtype=torch.float64)


def ev(point: str, ref: dict, cand: dict, block: int | None = 0, **kw) -> Evidence:
    probe = point if block is None else f"blocks.{block}.{point}"
    facts = {"head_dim": D, "num_heads": NQ, "num_kv_heads": NKV, "hidden_size": H, "rope_base": 10000.0,
             "rotary_dim": D, "num_blocks": 2, **kw.pop("facts", {})}
    return Evidence(probe, point, block, ref, cand, kw.pop("weights", {}), facts, kw.pop("dtype", "float32"), None)


def winner(e: Evidence) -> Result:
    results = evaluate(e)
    assert results and results[0].fits, [(r.name, r.residual) for r in results[:4]]
    return results[0]


def test_scale_recognizes_one_over_d() -> None:
    r = rnd(T, H)
    w = winner(ev("mlp_out", {"blocks.0.mlp_out": r}, {"blocks.0.mlp_out": r / D}))
    assert w.name == "scale" and w.params["factor"] == pytest.approx(1 / D) and w.params["recognized"].startswith("1/d")


def test_bias_names_the_dropped_projection() -> None:
    r, b = rnd(T, NQ * D), rnd(3 * NQ * D)
    e = ev("attn.q", {"blocks.0.attn.q": r}, {"blocks.0.attn.q": r - b[:NQ * D]}, weights={"biases": {"c_attn": b}})
    w = winner(e)
    assert (w.name, w.params["bias"], w.params["kind"]) == ("bias", "c_attn[q]", "missing")


def test_permutation_recognizes_the_grouped_split() -> None:
    q, k, v = rnd(T, NQ, D), rnd(T, NKV, D), rnd(T, NKV, D)
    ref = {"blocks.0.attn.q": q, "blocks.0.attn.k": k, "blocks.0.attn.v": v}
    cand = {"blocks.0.attn.q": torch.stack([q[:, 0], q[:, 1], k[:, 0], k[:, 1]], dim=1)}  # q|k|v read as per-group
    w = winner(ev("attn.q", ref, cand))
    assert w.name == "permutation" and w.params["layout"].startswith("per-KV-group interleaved")
    assert w.params["mapping"] == ["q0", "q1", "k0", "k1"]


@pytest.mark.parametrize("order", ["pairs", "halves", "other"])
def test_channel_permutation_names_llamacpps_pair_order(order: str) -> None:
    from parity.verdict.hypotheses.generic import half_order, pair_order

    q = rnd(T, NQ, D)
    pick = {"pairs": pair_order(D), "halves": half_order(D), "other": [1, 0] + list(range(2, D))}[order]
    w = winner(ev("attn.q", {"blocks.0.attn.q": q}, {"blocks.0.attn.q": q[..., pick]}))
    assert w.name == "channel-permutation" and w.residual < 1e-12
    assert w.params["layout"] == (None if order == "other" else order)
    assert w.params["mapping"] == (pick if order == "other" else None)
    assert pair_order(8) == [0, 4, 1, 5, 2, 6, 3, 7] and [pair_order(8)[i] for i in half_order(8)] == list(range(8))
    from parity.faults.gguf import qk_permutation  # the GGUF fault's own (numpy) permutation: the same order

    assert list(qk_permutation(2 * D, 2)[:D]) == pair_order(D)


def test_transposed_square_weight() -> None:
    x, wq = rnd(T, H), rnd(H, H)
    e = ev("attn.q", {"blocks.0.attn_in": x, "blocks.0.attn.q": (x @ wq.T).view(T, NQ, -1)},
           {"blocks.0.attn.q": (x @ wq).view(T, NQ, -1)}, weights={"attn.q.weight": wq})
    assert winner(e).name == "transposed-weight"


def _rope(shift: float = 0.0, base: float = 10000.0, layout: str = "half") -> tuple[torch.Tensor, torch.Tensor]:
    return table(torch.arange(T, dtype=torch.float64) + shift, freqs_for_base(base, D), layout)


@pytest.mark.parametrize(("variant", "name", "param"), [
    ("twice", "rotary-twice", None), ("shift", "rotary-shift", ("k", 1)), ("interleaved", "rotary-interleaved", None),
    ("base", "rotary-base", ("ratio", 100.0)),
])
def test_rotary_variants_on_q_rot(variant: str, name: str, param: tuple | None) -> None:
    q = rnd(T, NQ, D)
    cos, sin = _rope()
    ref = {"rope.cos": cos, "rope.sin": sin, "blocks.0.attn.q": q, "blocks.0.attn.q_rot": rotate(q, cos, sin)}
    cand = {"twice": lambda: rotate(rotate(q, cos, sin), cos, sin), "shift": lambda: rotate(q, *_rope(1.0)),
            "interleaved": lambda: rotate(q, *_rope(layout="interleaved"), layout="interleaved"),
            "base": lambda: rotate(q, *_rope(base=1e6))}[variant]()
    w = winner(ev("attn.q_rot", ref, {"blocks.0.attn.q_rot": cand}))
    assert w.name == name
    if param:
        assert w.params[param[0]] == pytest.approx(param[1], rel=1e-3)


def test_logn_omitted_past_seq_length() -> None:
    q, s = rnd(T, NQ, D), 8
    cos, sin = _rope()
    p = torch.arange(T, dtype=torch.float64)
    f = torch.where(p >= s, torch.log(p + 1) / math.log(s), torch.ones_like(p))[:, None, None]
    ref = {"rope.cos": cos, "rope.sin": sin, "blocks.0.attn.q": q, "blocks.0.attn.q_rot": rotate(q, cos, sin) * f}
    e = ev("attn.q_rot", ref, {"blocks.0.attn.q_rot": rotate(q, cos, sin)}, facts={"seq_length": s, "logn_attn": True})
    w = winner(e)
    assert (w.name, w.params["logn"], w.params["seq_length"]) == ("logn", False, s)
    line, runs = named.token_line(e, e.tolerance)
    assert runs == [{"first": 0, "last": s - 1, "off": False}, {"first": s, "last": T - 1, "off": True}], line


def _attention(q, k, v, wo, scale=None, shift=0):
    rep = NQ // NKV
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = torch.einsum("thd,shd->hts", q, k) * (scale or 1 / math.sqrt(D))
    mask = torch.ones(T, T, dtype=torch.bool).tril(shift)
    p = torch.softmax(s.masked_fill(~mask, float("-inf")), -1)
    return torch.einsum("hts,shd->thd", p, v).reshape(T, -1) @ wo.T


@pytest.mark.parametrize(("kw", "name", "param"), [
    ({"scale": 1.0 / D}, "softmax-scale", ("scale", 1.0 / D)), ({"shift": 1}, "mask-shift", ("shift", 1)),
])
def test_attention_variants(kw: dict, name: str, param: tuple) -> None:
    q, k, v, wo = rnd(T, NQ, D), rnd(T, NKV, D), rnd(T, NKV, D), rnd(H, NQ * D) / 8
    cos, sin = _rope()
    qr, kr = rotate(q, cos, sin), rotate(k, cos, sin)
    ref = {"rope.cos": cos, "rope.sin": sin, "blocks.0.attn.q": q, "blocks.0.attn.k": k, "blocks.0.attn.v": v,
           "blocks.0.attn_out": _attention(qr, kr, v, wo)}
    e = ev("attn_out", ref, {"blocks.0.attn_out": _attention(qr, kr, v, wo, **kw)}, weights={"o_proj.weight": wo})
    w = winner(e)
    assert w.name == name and w.params[param[0]] == pytest.approx(param[1], rel=1e-3)
    if name == "softmax-scale":
        assert w.params["recognized"].startswith("1/d")


@pytest.mark.parametrize("work", [torch.float64, torch.float32])
def test_batched_rotary_residuals_equal_one_at_a_time(work: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attention.residuals (the rotary variants in one batch, chunked) is residual(c, out(q, k)) per pair."""
    from parity.verdict.hypotheses import attention

    q, k, v, wo = rnd(T, NQ, D), rnd(T, NKV, D), rnd(T, NKV, D), rnd(H, NQ * D) / 8
    cos, sin = _rope()
    ref = {"rope.cos": cos, "rope.sin": sin, "blocks.0.attn.q": q, "blocks.0.attn.k": k, "blocks.0.attn.v": v,
           "blocks.0.attn_out": _attention(rotate(q, cos, sin), rotate(k, cos, sin), v, wo)}
    e = Evidence("blocks.0.attn_out", "attn_out", 0, ref, {"blocks.0.attn_out": rnd(T, H)}, {"o_proj.weight": wo, "o_proj.bias": rnd(H)},
                 {"head_dim": D, "rope_base": 10000.0, "rotary_dim": D}, "float16", None, work)
    att = attention.Attention(e)
    c = e.out_cand[att.rows]
    pairs = [(fn(att.q), fk(att.k)) for (_, _, _, fn), (_, _, _, fk) in zip(att.rot.variants(True), att.rot.variants(False))]
    one = [residual(c, att.out(qr, kr)) for qr, kr in pairs]
    assert len(pairs) > 8
    assert att.residuals(c, pairs) == pytest.approx(one, rel=1e-9 if work == torch.float64 else 1e-4)
    monkeypatch.setattr(attention, "SCORES_MAX", 1)  # one variant per chunk
    assert att.residuals(c, pairs) == pytest.approx(one, rel=1e-9 if work == torch.float64 else 1e-4)


def _rms(x, w, eps, outside=False):
    ms = x.pow(2).mean(-1, keepdim=True)
    return (x / (ms.sqrt() + eps) if outside else x * torch.rsqrt(ms + eps)) * w


@pytest.mark.parametrize(("cand_kw", "name"), [({"outside": True}, "norm-eps-outside-root"), ({"eps": 0.1}, "norm-eps")])
def test_norm_variants(cand_kw: dict, name: str) -> None:
    x, w = rnd(T, H) * 0.01, 1 + 0.1 * rnd(H)  # small activations: epsilon matters
    eps = 1e-5
    c = _rms(x, w, cand_kw.get("eps", eps), cand_kw.get("outside", False))
    e = ev("mlp_in", {"blocks.0.resid_mid": x, "blocks.0.mlp_in": _rms(x, w, eps)}, {"blocks.0.mlp_in": c},
           weights={"norm.weight": w, "norm.eps": eps})
    got = winner(e)
    assert got.name == name
    if name == "norm-eps":
        assert got.params["eps"] == pytest.approx(0.1, rel=1e-3)


@pytest.mark.parametrize(("cand", "name"), [("branch", "activation-wrong-branch"), ("gelu", "activation-function")])
def test_activation_variants(cand: str, name: str) -> None:
    x, gate, up, down = rnd(T, H), rnd(40, H) / 8, rnd(40, H) / 8, rnd(H, 40) / 8
    ref = (F.silu(x @ gate.T) * (x @ up.T)) @ down.T
    c = {"branch": (F.silu(x @ up.T) * (x @ gate.T)) @ down.T, "gelu": (F.gelu(x @ gate.T) * (x @ up.T)) @ down.T}[cand]
    e = ev("mlp_out", {"blocks.0.mlp_in": x, "blocks.0.mlp_out": ref}, {"blocks.0.mlp_out": c},
           weights={"mlp.up": [gate, up], "mlp.down": down, "mlp.names": ["gate_proj", "up_proj"]})
    got = winner(e)
    assert got.name == name
    if name == "activation-wrong-branch":
        assert (got.params["gated"], got.params["expected"]) == ("up_proj", "gate_proj")


def test_unrelated_error_is_not_explained_and_the_location_hint_stays() -> None:
    r = rnd(T, H)
    e = ev("mlp_out", {"blocks.0.mlp_out": r}, {"blocks.0.mlp_out": r + 0.5 * rnd(T, H)})
    results = evaluate(e)
    assert results and not any(x.fits for x in results)
    diag = {"hint": "activation/gating: by location", "evidence": []}
    named.apply(diag, results, e, "forward", {})
    assert diag["named_cause"] is None and diag["hint"].startswith("no tested hypothesis") and "by location" in diag["hint"]
    assert summary(results, e)["cause_found"] is False


def test_registry_takes_user_hypotheses_and_survives_a_broken_one() -> None:
    r = rnd(T, H)
    cand = r.flip(0)  # tokens in reverse order: no built-in explains it

    @hypothesis("test-token-reversal", ["mlp_out"])
    def reversal(e: Evidence) -> list[Result]:
        return [Result("test-token-reversal", "custom", {}, residual(e.out_cand, e.out_ref.flip(0)), "tokens reversed")]

    @hypothesis("test-broken", ["*"])
    def broken(e: Evidence) -> list[Result]:
        raise RuntimeError("bug in a user hypothesis")

    try:
        w = winner(ev("mlp_out", {"blocks.0.mlp_out": r}, {"blocks.0.mlp_out": cand}))
        assert w.name == "test-token-reversal" and w.cause == "tokens reversed"
    finally:
        HYPOTHESES.pop("test-token-reversal")
        HYPOTHESES.pop("test-broken")


def test_token_ranges() -> None:
    assert named.ranges([False] * 3 + [True] * 2 + [False]) == [(0, 2, False), (3, 4, True), (5, 5, False)]

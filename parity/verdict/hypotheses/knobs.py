"""Component re-implementations with knobs: the reference's rotary and attention recomputed
from their matched inputs and the reference's own weights under a small grammar of variants.

* rotary formula ``A * x + B * R(x)``: A, B each cos, sin, 1 or 0; R rotate_half, its
  negation, identity or the halves exchanged without the sign; and the rotary applied to v
  (a wire crossed before the rotary). At q_rot/k_rot directly; at attn_out through the
  attention, on q, k or both, when the rotary is not exposed.
* attention operands: the query, key and value each any of q, k, v (rotated as the reference
  rotates them); softmax over the query axis; no softmax; the mask inverted; GQA heads tiled
  for the keys or the values only; the output projection skipped.

Each variant is exact or nothing: its residual is judged like every hypothesis (core.judge)."""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator

import torch

from parity.verdict.hypotheses.attention import Attention
from parity.verdict.hypotheses.core import EXPLAINS, Evidence, Result, residual
from parity.verdict.hypotheses.registry import hypothesis
from parity.verdict.hypotheses.rotary import Rotary

FACTORS = ("cos", "sin", "1", "0")
TURNS = ("rh", "-rh", "id", "swap", "a,-b", "-b,b", "-a,a")
REFERENCE = ("cos", "sin", "rh")


def _turn(x: torch.Tensor, how: str) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    if how == "rh":
        return torch.cat((-b, a), dim=-1)
    if how == "-rh":
        return torch.cat((b, -a), dim=-1)
    if how == "swap":
        return torch.cat((b, a), dim=-1)
    if how == "a,-b":
        return torch.cat((a, -b), dim=-1)
    if how == "-b,b":
        return torch.cat((-b, b), dim=-1)
    if how == "-a,a":
        return torch.cat((-a, a), dim=-1)
    return x


def formula(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, a: str, b: str, r: str) -> torch.Tensor:
    """``A * x + B * R(x)`` on the first rotary channels of ``x`` [T, h, d]."""
    rd = cos.shape[-1]
    rot, rest = x[..., :rd], x[..., rd:]
    pick = {"cos": cos[:, None, :], "sin": sin[:, None, :], "1": 1.0, "0": 0.0}
    out = rot * pick[a] if a != "0" else torch.zeros_like(rot)
    if b != "0":
        out = out + _turn(rot, r) * pick[b]
    return torch.cat((out, rest), dim=-1)


def variants() -> Iterator[tuple[str, str, str]]:
    """(A, B, R) of every distinct formula other than the reference's."""
    seen = set()
    for a, b, r in itertools.product(FACTORS, FACTORS, TURNS):
        key = (a, b, r if b != "0" else "-")
        if (a, b, r) == REFERENCE or key in seen or (a == "0" and b == "0"):
            continue
        seen.add(key)
        yield a, b, r


WORDS = {"rh": "rotate_half(x)", "-rh": "-rotate_half(x) (the rotation reversed)", "id": "x (rotate_half left out)",
         "swap": "the halves exchanged without the sign", "a,-b": "(x1, -x2) (halves not exchanged, second negated)",
         "-b,b": "(-x2, x2) (x1 lost)", "-a,a": "(-x1, x1) (x2 lost)"}


def _cause(a: str, b: str, r: str, where: str) -> str:
    return (f"rotary computed as {a} * x + {b} * R(x) with R = {WORDS[r]}, instead of cos * x + sin * rotate_half(x)"
            f"{where}")


def _label(a: str, b: str, r: str) -> str:
    return f"rot:{a},{b},{r}"


def _tables(rot: Rotary) -> tuple[torch.Tensor, torch.Tensor]:
    return rot._table(0.0, rot.freqs, "half")


@hypothesis("rotary-formula", ["attn.q_rot", "attn.k_rot"], generic=True)
def rotary_formula(ev: Evidence) -> list[Result]:
    """The rotary's formula varied at q_rot/k_rot (from the reference's q/k), and the rotary of v."""
    pre = ev.r(ev.point.replace("_rot", ""))
    if pre is None or pre.dim() != 3:
        return []
    rot = Rotary(ev, pre.shape[0])
    is_q = ev.point == "attn.q_rot"
    if rot.freqs is None or residual(ev.out_ref, rot.apply(pre, is_q=is_q)) > 1e-4 or rot.ref_logn:
        return []
    cos, sin = _tables(rot)
    c = ev.out_cand
    out = [Result("rotary-formula", "rotary", {"A": a, "B": b, "R": r, "label": _label(a, b, r)},
                  residual(c, formula(pre.to(cos.dtype), cos, sin, a, b, r)), _cause(a, b, r, f" at {ev.probe}"))
           for a, b, r in variants()]
    v = ev.r("attn.v")
    if v is not None and v.shape == pre.shape:
        out.append(Result("rotary-formula", "rotary", {"operand": "v", "label": "rot-of:v"},
                          residual(c, rot.apply(v, is_q=is_q)), f"{ev.probe} is the rotary of v: v taken where "
                          f"{ev.point[5]} belongs before the rotary (a wire crossed)"))
    return out


# --------------------------------------------------------------------------- attention


def _spread(att: Attention, x: torch.Tensor, tiled: bool = False) -> torch.Tensor:
    return att._spread(x, tiled)


def attend(att: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, axis: int = -1, softmax: bool = True,
           inverted: bool = False, project: bool = True) -> torch.Tensor:
    """The reference attention on the sampled rows with operands q [T, h, d], k/v [T, h, d]."""
    rows = att.rows if not att.all_rows else None
    qs = q if rows is None else q[rows]
    s = torch.einsum("thd,shd->hts", qs, k) / math.sqrt(att.d)
    masked = att._masked(0)
    if inverted:  # keys before the query hidden, itself and the future visible
        masked = torch.arange(att.t, device=s.device)[None, :] < att.rows[:, None]
    if softmax:
        p = torch.softmax(s.masked_fill(masked, float("-inf")), dim=axis)
        p = torch.nan_to_num(p, nan=0.0)
    else:
        p = s
    ctx = torch.einsum("hts,shd->thd", p, v).reshape(qs.shape[0], -1)
    if not project:
        return ctx
    out = ctx @ att.w.T
    return out if att.b is None else out + att.b


def _operands(att: Attention) -> dict[str, torch.Tensor]:
    """q, and k / v spread to the query heads (as the reference repeats them)."""
    return {"q": att.qr, "k": _spread(att, att.kr), "v": _spread(att, att.v)}


def attention_variants(att: Attention) -> Iterator[tuple[str, dict, str, Callable[[], torch.Tensor]]]:
    """(label, params, cause, prediction) of each attention variant."""
    ops = _operands(att)
    for qn, kn, vn in itertools.product("qkv", repeat=3):
        if (qn, kn, vn) == ("q", "k", "v"):
            continue
        yield (f"attn:{qn},{kn},{vn}", {"query": qn, "key": kn, "value": vn},
               f"attention computed with query {qn}, key {kn}, value {vn} instead of q, k, v (operands crossed)",
               lambda qn=qn, kn=kn, vn=vn: attend(att, ops[qn], ops[kn], ops[vn]))
    k, v = _spread(att, att.kr), _spread(att, att.v)
    if att.all_rows:
        yield ("softmax-axis", {"axis": "queries"}, "softmax taken over the query axis instead of the keys",
               lambda: attend(att, att.qr, k, v, axis=-2))
    yield ("no-softmax", {}, "softmax left out: the raw scaled scores weight the values",
           lambda: attend(att, att.qr, k, v, softmax=False))
    yield ("mask-inverted", {}, "causal mask inverted (each token sees itself and the future, not the past)",
           lambda: attend(att, att.qr, k, v, inverted=True))
    if 1 < att.hkv < att.hq:
        yield ("gqa-tiled:k", {"operand": "k"}, "GQA: kv heads tiled (h % kv_heads) for the keys only",
               lambda: attend(att, att.qr, _spread(att, att.kr, True), v))
        yield ("gqa-tiled:v", {"operand": "v"}, "GQA: kv heads tiled (h % kv_heads) for the values only",
               lambda: attend(att, att.qr, k, _spread(att, att.v, True)))
    if att.hq * att.d == att.w.shape[0]:
        yield ("o_proj-skipped", {}, "the attention's output projection skipped (attn_out is the context before it)",
               lambda: attend(att, att.qr, k, v, project=False))


@hypothesis("attention-variants", ["attn_out"], generic=True)
def attention_knobs(ev: Evidence) -> list[Result]:
    att = Attention(ev)
    if not att.ok or residual(ev.out_ref[att.rows], att.out()) > 1e-3:
        return []
    c = ev.out_cand[att.rows]
    out = [Result("attention-variant", "attention", {**params, "label": label}, residual(c, fn()), cause)
           for label, params, cause, fn in attention_variants(att)]
    if any(r.residual <= min(ev.tolerance, EXPLAINS * ev.identity) for r in out) or att.rot.freqs is None \
            or ev.r("attn.q_rot") is not None:
        return out
    return out + _formula_through_attention(att, c)


def _formula_through_attention(att: Attention, c: torch.Tensor) -> list[Result]:
    """The rotary formula variants on q, k or both, through the attention (q_rot not exposed)."""
    rot = att.rot
    if rot.ref_logn:
        return []
    cos, sin = _tables(rot)
    q, k = att.q.to(cos.dtype), att.k.to(cos.dtype)
    found, pairs = [], []
    for a, b, r in variants():
        fq, fk = formula(q, cos, sin, a, b, r), formula(k, cos, sin, a, b, r)
        for where, pair in (("", (fq, fk)), (" (on q only)", (fq, att.kr)), (" (on k only)", (att.qr, fk))):
            pairs.append(pair)
            found.append((a, b, r, where))
    v = att.v
    if v.shape == att.q.shape:
        pairs += [(rot.apply(v), att.kr), (att.qr, rot.apply(v, is_q=False))]
        found += [("v", "q", "", ""), ("v", "k", "", "")]
    res = att.residuals(c, pairs)
    out = []
    for (a, b, r, where), x in zip(found, res):
        if a == "v":
            out.append(Result("rotary-formula", "rotary", {"operand": "v", "replaces": b, "label": "rot-of:v"}, x,
                              f"the rotary of v used as {b} (a wire crossed before the rotary)"))
        else:
            out.append(Result("rotary-formula", "rotary", {"A": a, "B": b, "R": r, "where": where.strip(" ()") or "q and k",
                                                           "label": _label(a, b, r)}, x, _cause(a, b, r, where)))
    return out

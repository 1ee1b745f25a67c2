"""Attention hypotheses at ``attn_out``, recomputed from the reference's q/k/v (rotated with
the reference's rotary when q_rot/k_rot are not captured) through the reference's output
projection: softmax scale (fitted, and named: 1/d, 1/sqrt(d)...), causal mask shifted or
missing, softmax in low precision, GQA heads tiled instead of interleaved, a transposed output
projection, and every rotary variant of parity.verdict.hypotheses.rotary applied to q and k."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from parity.verdict.hypotheses.registry import hypothesis
from parity.verdict.hypotheses.core import EXPLAINS, Evidence, Result, log_fit, recognise, residual
from parity.verdict.hypotheses.rotary import Rotary

LOW = {"float16": torch.float16, "bfloat16": torch.bfloat16}
#: query rows the attention variants are recomputed for (each row needs all keys, so the
#: cost of one recompute is rows x T, not T x T): every row up to this many tokens, else
#: the first 16 and evenly spaced ones up to the last (a shifted mask, logN past
#: seq_length, positions shifted by k all show on such rows)
MAX_ROWS = 128


def query_rows(t: int, device: object) -> torch.Tensor:
    if t <= MAX_ROWS:
        return torch.arange(t, device=device)
    head = torch.arange(16)
    spread = torch.linspace(16, t - 1, MAX_ROWS - 16).round().long()
    return torch.unique(torch.cat((head, spread))).to(device)


class Attention:
    """The reference's attention as a function of its variants."""

    def __init__(self, ev: Evidence) -> None:
        q, k, v = ev.r("attn.q"), ev.r("attn.k"), ev.r("attn.v")
        self.ok = all(x is not None and x.dim() == 3 for x in (q, k, v)) and "o_proj.weight" in ev.weights
        if not self.ok:
            return
        self.ev, self.q, self.k, self.v = ev, q.double(), k.double(), v.double()
        self.t, self.hq, self.d = self.q.shape
        self.hkv = self.k.shape[1]
        self.rot = Rotary(ev, self.t)
        self.w = ev.weights["o_proj.weight"].double()
        b = ev.weights.get("o_proj.bias")
        self.b = None if b is None else b.double()
        qr, kr = ev.r("attn.q_rot"), ev.r("attn.k_rot")
        self.qr = qr.double() if qr is not None else (self.rot.apply(self.q) if self.rot.freqs is not None else self.q)
        self.kr = kr.double() if kr is not None else (self.rot.apply(self.k, is_q=False) if self.rot.freqs is not None else self.k)
        self.rows = query_rows(self.t, self.q.device)

    def out(self, qr: torch.Tensor | None = None, kr: torch.Tensor | None = None, *, scale: float | None = None,
            shift: int = 0, mask: bool = True, tiled: bool = False, low: torch.dtype | None = None,
            transposed: bool = False) -> torch.Tensor:
        qr = self.qr if qr is None else qr
        kr = self.kr if kr is None else kr
        rep = self.hq // self.hkv
        idx = torch.arange(self.hq, device=qr.device)
        idx = idx % self.hkv if tiled else idx // rep
        k, v = kr[:, idx], self.v[:, idx]
        s = torch.einsum("thd,shd->hts", qr[self.rows], k) * (1 / math.sqrt(self.d) if scale is None else scale)
        if mask:
            t = torch.arange(self.t, device=qr.device)
            allowed = t[None, :] <= self.rows[:, None] + shift
            s = s.masked_fill(~allowed, float("-inf"))
        if low is not None:
            p = torch.softmax(s.to(low), dim=-1).double()
        else:
            p = torch.softmax(s, dim=-1)
        p = torch.nan_to_num(p, nan=0.0)
        ctx = torch.einsum("hts,shd->thd", p, v).reshape(len(self.rows), -1)
        out = ctx @ (self.w if transposed else self.w.T)
        return out if self.b is None else out + self.b


def _fit_scale(score: Callable[[float], float], d: int, good: float) -> float:
    """The softmax scale minimizing ``score``: the usual mistakes first (one that scores
    ``good`` or better ends the search), then a fit."""
    usual = [1 / d, 1 / math.sqrt(d), 1.0, 1 / math.sqrt(2 * d), math.sqrt(2 / d)]
    best = min(usual, key=score)
    if score(best) <= good:
        return best
    return min([best, log_fit(score, 1 / (16 * d), 16.0, points=12, iters=16)], key=score)


@hypothesis("attention", ["attn_out"])
def attention(ev: Evidence) -> list[Result]:
    """The discrete variants first; the two continuous fits (softmax scale, rotary base: ~30
    recomputes each) only when none of those reproduces the candidate -- a cause found makes
    them runners-up not worth their cost (the targeted pass's cost is one extra forward)."""
    att = Attention(ev)
    if not att.ok or residual(ev.out_ref.double()[att.rows], att.out()) > 1e-3:
        return []  # our attention does not reproduce the reference's
    c = ev.out_cand.double()[att.rows]  # residuals over the recomputed query rows
    out: list[Result] = []
    for shift in (1, -1):
        out.append(Result("mask-shift", "attention", {"shift": shift}, residual(c, att.out(shift=shift)),
                          f"causal mask shifted by {shift:+d} ({'one future token visible' if shift > 0 else 'the diagonal masked'})"))
    out.append(Result("no-mask", "attention", {}, residual(c, att.out(mask=False)), "no causal mask (every token sees the future)"))
    low = LOW.get(ev.dtype)
    if low is not None:
        out.append(Result("low-precision-softmax", "attention", {"dtype": ev.dtype}, residual(c, att.out(low=low)),
                          f"softmax computed in {ev.dtype}"))
    if 1 < att.hkv < att.hq:
        out.append(Result("gqa-tiled", "attention", {"kv_heads": att.hkv, "heads": att.hq}, residual(c, att.out(tiled=True)),
                          "GQA: kv heads tiled (head h uses kv h % kv_heads) instead of interleaved (h // group)"))
    if att.w.shape[0] == att.w.shape[1]:
        out.append(Result("transposed-weight", "transpose", {"projection": "o_proj"}, residual(c, att.out(transposed=True)),
                          "the attention output projection's weight is used transposed"))
    out += _rotary_variants(att, c)
    explained = residual(c, ev.out_ref.double()[att.rows]) * EXPLAINS
    if any(r.residual <= min(ev.tolerance, explained) for r in out):
        return out
    s = _fit_scale(lambda x: residual(c, att.out(scale=x)), att.d, ev.tolerance)
    named = recognise(s, {"head_dim": att.d}, rel=1e-2)
    out.append(Result("softmax-scale", "attention", {"scale": s, "recognized": named, "expected": f"1/sqrt(d) (d={att.d})"},
                      residual(c, att.out(scale=s)),
                      f"softmax scale {s:.4g}" + (f" = {named}" if named else "") + f" instead of 1/sqrt(d) = {1 / math.sqrt(att.d):.4g}"))
    if any(r.residual <= min(ev.tolerance, explained) for r in out) or att.rot.freqs is None:
        return out
    out.append(_rotary_base(att, c, ev.tolerance))
    return out


def _rotary_variants(att: Attention, c: torch.Tensor) -> list[Result]:
    """Rotary variants applied to the reference's q and k, through the attention."""
    rot = att.rot
    if rot.freqs is None:
        return []
    out = []
    kv = {name + repr(sorted(p.items())): fn for name, p, _, fn in rot.variants(is_q=False)}
    for name, params, cause, fn in rot.variants(is_q=True):
        fk = kv.get(name + repr(sorted(params.items())))
        k_new = att.kr if name == "logn" or fk is None else fk(att.k)
        out.append(Result(name, "rotary", params, residual(c, att.out(fn(att.q), k_new)), cause))
    return out


def _rotary_base(att: Attention, c: torch.Tensor, good: float) -> Result:
    """The rotary base fitted through the attention."""
    rot = att.rot
    base, res = rot.fit_base(lambda f: residual(c, att.out(rot.apply(att.q, freqs=f), rot.apply(att.k, freqs=f, is_q=False))),
                             good=good)
    ref_base = rot.base_guess()
    return Result("rotary-base", "rotary", {"base": base, "reference_base": ref_base, "ratio": base / ref_base}, res,
                  f"rotary base {base:.4g} instead of {ref_base:.4g} (x{base / ref_base:.3g})")

"""Attention hypotheses at ``attn_out``, recomputed from the reference's q/k/v (rotated with
the reference's rotary when q_rot/k_rot are not captured) through the reference's output
projection: softmax scale (fitted, and named: 1/d, 1/sqrt(d)...), causal mask shifted or
missing, softmax in low precision, GQA heads tiled instead of interleaved, a transposed output
projection, and every rotary variant of parity.verdict.hypotheses.rotary applied to q and k."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from parity import dtypes
from parity.verdict.hypotheses.registry import hypothesis
from parity.verdict.hypotheses.core import EXPLAINS, Evidence, Result, log_fit, recognise, residual, sample_rows
from parity.verdict.hypotheses.rotary import Rotary, base_result

#: the batched rotary variants (Attention.residuals) run in chunks of at most this many scores
SCORES_MAX = 1 << 26


class Attention:
    """The reference's attention as a function of its variants."""

    def __init__(self, ev: Evidence) -> None:
        q, k, v = ev.r("attn.q"), ev.r("attn.k"), ev.r("attn.v")
        self.ok = all(x is not None and x.dim() == 3 for x in (q, k, v)) and "o_proj.weight" in ev.weights
        if not self.ok:
            return
        self.ev, self.q, self.k, self.v = ev, q, k, v
        self.t, self.hq, self.d = self.q.shape
        self.hkv = self.k.shape[1]
        self.rot = Rotary(ev, self.t)
        self.w = ev.weights["o_proj.weight"]
        self.b = ev.weights.get("o_proj.bias")
        qr, kr = ev.r("attn.q_rot"), ev.r("attn.k_rot")
        self.qr = qr if qr is not None else (self.rot.apply(self.q) if self.rot.freqs is not None else self.q)
        self.kr = kr if kr is not None else (self.rot.apply(self.k, is_q=False) if self.rot.freqs is not None else self.k)
        self.rows = sample_rows(self.t, self.q.device)  # each row needs all keys: a recompute costs rows x T
        self.all_rows = len(self.rows) == self.t
        self.cache: dict[tuple[str, object], torch.Tensor] = {}

    def out(self, qr: torch.Tensor | None = None, kr: torch.Tensor | None = None, *, scale: float | None = None,
            shift: int = 0, mask: bool = True, tiled: bool = False, low: torch.dtype | None = None,
            transposed: bool = False) -> torch.Tensor:
        qr = self.qr if qr is None else qr
        kr = self.kr if kr is None else kr
        k, v = self._spread(kr, tiled), self._spread(self.v, tiled)
        s = torch.einsum("thd,shd->hts", self._rows(qr), k) * (1 / math.sqrt(self.d) if scale is None else scale)
        if mask:
            s = s.masked_fill(self._masked(shift), float("-inf"))
        if low is not None:
            p = torch.softmax(s.to(low), dim=-1).to(s.dtype)
        else:
            p = torch.softmax(s, dim=-1)
        if (mask and shift < 0) or low is not None:  # a row with every key masked, or an overflow: nan -> 0
            p = torch.nan_to_num(p, nan=0.0)
        ctx = torch.einsum("hts,shd->thd", p, v).reshape(len(self.rows), -1)
        out = ctx @ (self._w_t().T if transposed else self.w.T)
        return out if self.b is None else out + self.b

    def residuals(self, c: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
        """``residual(c, out(qr, kr))`` for each (qr, kr) in ``pairs``, computed as one batch
        (a few launches and one synchronization for all, not a recompute each): the rotary
        variants. Chunked to keep the scores under SCORES_MAX elements."""
        v = self._spread(self.v, False)
        per = max(1, SCORES_MAX // max(1, self.hq * len(self.rows) * self.t))
        num: list[float] = []
        den = None
        for at in range(0, len(pairs), per):
            chunk = pairs[at:at + per]
            q = torch.stack([self._rows(qr) for qr, _ in chunk])  # [V, R, h, d]
            k = torch.stack([self._spread(kr, False) for _, kr in chunk])  # [V, T, h, d]
            s = torch.einsum("vrhd,vshd->vhrs", q, k) * (1 / math.sqrt(self.d))
            p = torch.softmax(s.masked_fill(self._masked(0), float("-inf")), dim=-1)
            ctx = torch.einsum("vhrs,shd->vrhd", p, v).reshape(len(chunk), len(self.rows), -1)
            out = ctx @ self.w.T
            if self.b is not None:
                out = out + self.b
            d = out - c[None]
            sums = torch.cat(((d * d).sum(dim=(1, 2)), (c * c).sum().reshape(1))).tolist()
            num += sums[:-1]
            den = sums[-1]
        if not den or not math.isfinite(den):
            return [math.inf] * len(pairs)
        return [math.sqrt(x) / math.sqrt(den) if math.isfinite(x) else math.inf for x in num]

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.all_rows else x[self.rows]

    def _w_t(self) -> torch.Tensor:
        """The output weight transposed, contiguous: ``ctx @ W`` is then run as ``ctx @ (W^T)^T``,
        the layout of ``ctx @ W.T`` whose GEMM the forward already ran (another one is cold)."""
        key = ("w_t", 0)
        if key not in self.cache:
            self.cache[key] = self.w.T.contiguous()
        return self.cache[key]

    def _spread(self, x: torch.Tensor, tiled: bool) -> torch.Tensor:
        """[T, kv heads, d] -> [T, heads, d]: query head h uses kv head h // group (interleaved), or
        h % kv_heads (tiled). Expand + reshape, not an index: its kernel is cold in a run."""
        if self.hkv == self.hq:
            return x
        t, n, d = x.shape
        rep = self.hq // n
        wide = x[:, None].expand(t, rep, n, d) if tiled else x[:, :, None].expand(t, n, rep, d)
        return wide.reshape(t, self.hq, d)

    def _masked(self, shift: int) -> torch.Tensor:
        """[rows, T]: True where the causal mask (shifted by ``shift``) hides a key."""
        key = ("mask", shift)
        if key not in self.cache:
            t = torch.arange(self.t, device=self.q.device)
            self.cache[key] = t[None, :] > self.rows[:, None] + shift
        return self.cache[key]


def _fit_scale(score: Callable[[float], float], d: int, good: float) -> float:
    """The softmax scale minimizing ``score``: the usual mistakes first (one that scores
    ``good`` or better ends the search), then a fit."""
    usual = [1 / d, 1 / math.sqrt(d), 1.0, 1 / math.sqrt(2 * d), math.sqrt(2 / d), math.sqrt(d), 0.5, 2.0,
             2 / math.sqrt(d), 1 / (2 * math.sqrt(d))]
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
    if not att.ok or residual(ev.out_ref[att.rows], att.out()) > 1e-3:
        return []  # our attention does not reproduce the reference's
    c = ev.out_cand[att.rows]  # residuals over the recomputed query rows
    out: list[Result] = []
    for shift in (1, -1):
        out.append(Result("mask-shift", "attention", {"shift": shift}, residual(c, att.out(shift=shift)),
                          f"causal mask shifted by {shift:+d} ({'one future token visible' if shift > 0 else 'the diagonal masked'})"))
    out.append(Result("no-mask", "attention", {}, residual(c, att.out(mask=False)), "no causal mask (every token sees the future)"))
    low = dtypes.half_precision(ev.dtype)
    if low is not None:
        out.append(Result("low-precision-softmax", "attention", {"dtype": ev.dtype}, residual(c, att.out(low=low)),
                          f"softmax computed in {ev.dtype}"))
    if 1 < att.hkv < att.hq:
        out.append(Result("gqa-tiled", "attention", {"kv_heads": att.hkv, "heads": att.hq}, residual(c, att.out(tiled=True)),
                          "GQA: kv heads tiled (head h uses kv h % kv_heads) instead of interleaved (h // group)"))
    if att.w.shape[0] == att.w.shape[1]:
        out.append(Result("transposed-weight", "transpose", {"projection": "o_proj"}, residual(c, att.out(transposed=True)),
                          "the attention output projection's weight is used transposed"))
    explained = residual(c, ev.out_ref[att.rows]) * EXPLAINS
    for first in (True, False):  # the common rotary mistakes, then (none fitting) the rest
        out += _rotary_variants(att, c, first)
        if any(r.residual <= min(ev.tolerance, explained) for r in out):
            return out
    s = _fit_scale(lambda x: residual(c, att.out(scale=x)), att.d, ev.tolerance)
    named = recognise(s, {"head_dim": att.d}, rel=1e-2)
    out.append(Result("softmax-scale", "attention", {"scale": s, "recognized": named, "expected": f"1/sqrt(d) (d={att.d})"},
                      residual(c, att.out(scale=s)),
                      f"softmax scale {s:.4g}" + (f" = {named}" if named else "") + f" instead of 1/sqrt(d) = {1 / math.sqrt(att.d):.4g}"))
    if any(r.residual <= min(ev.tolerance, explained) for r in out) or att.rot.freqs is None:
        return out
    out += _rotary_base(att, c, ev.tolerance)
    return out


#: the rotary variants tried first through the attention (the rest only when none of these fits)
COMMON = {("rotary-twice", ()), ("rotary-none", ()), ("rotary-interleaved", ()), ("rotary-shift", (("k", 1),)),
          ("rotary-shift", (("k", -1),))}


def _rotary_variants(att: Attention, c: torch.Tensor, common: bool | None = None) -> list[Result]:
    """Rotary variants applied to the reference's q and k, through the attention (``common``:
    only those of COMMON, or only the others; None: all)."""
    rot = att.rot
    if rot.freqs is None:
        return []
    kv = {name + repr(sorted(p.items())): fn for name, p, _, fn in rot.variants(is_q=False)}
    found, pairs = [], []
    for name, params, cause, fn in rot.variants(is_q=True):
        if common is not None and ((name, tuple(sorted(params.items()))) in COMMON) != common:
            continue
        fk = kv.get(name + repr(sorted(params.items())))
        pairs.append((fn(att.q), att.kr if name == "logn" or fk is None else fk(att.k)))
        found.append((name, params, cause))
    if not pairs:
        return []
    return [Result(name, "rotary", params, res, cause) for (name, params, cause), res in zip(found, att.residuals(c, pairs))]


def _rotary_base(att: Attention, c: torch.Tensor, good: float) -> list[Result]:
    """The rotary base fitted through the attention."""
    rot = att.rot
    base, res = rot.fit_base(lambda f: residual(c, att.out(rot.apply(att.q, freqs=f), rot.apply(att.k, freqs=f, is_q=False))),
                             good=good)
    r = base_result(rot, base, res)
    return [] if r is None else [r]

"""Rotary hypotheses: on the cos/sin tables (positions shifted by k, another base, interleaved
layout, NTK on/off) and on q_rot/k_rot from the reference's q/k (rotary applied twice, not at
all, interleaved vs rotate-half, another base, positions shifted by k, partial rotary dims,
Qwen's logN scaling on/off past seq_length, dynamic NTK on/off).

The reference's frequencies are read off its own table (``rope.cos``/``rope.sin`` at position
1) when captured, so NTK-scaled tables are the reference's too; otherwise from the config."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch

from parity.verdict.hypotheses.registry import hypothesis
from parity.verdict.hypotheses.core import EXPLAINS, Evidence, Result, log_fit, residual

Rot = Callable[[torch.Tensor], torch.Tensor]  # [T, h, d] -> [T, h, d]


def inv_freq(ev: Evidence) -> torch.Tensor | None:
    """The reference's rotary frequencies [rd/2] (in the evidence's working dtype)."""
    cos, sin = ev.ref.get("rope.cos"), ev.ref.get("rope.sin")
    if cos is not None and sin is not None and cos.shape[0] >= 2:
        half = cos.shape[-1] // 2
        return torch.atan2(sin[1, :half].cpu(), cos[1, :half].cpu()).to(sin.device)
    base, rd = ev.facts.get("rope_base"), ev.facts.get("rotary_dim")
    if not base or not rd:
        return None
    return freqs_for_base(float(base), rd, ev.out_ref.device, ev.work)


def freqs_for_base(base: float, rd: int, device: Any = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Frequencies of ``base`` (computed in float64 on the host: a few numbers)."""
    return (1.0 / (base ** (torch.arange(0, rd, 2, dtype=torch.float64) / rd))).to(device=device, dtype=dtype)


def table(positions: torch.Tensor, freqs: torch.Tensor, layout: str = "half") -> tuple[torch.Tensor, torch.Tensor]:
    ang = torch.outer(positions.to(freqs.dtype), freqs)
    emb = torch.cat((ang, ang), dim=-1) if layout == "half" else ang.repeat_interleave(2, dim=-1)
    return emb.cos(), emb.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str = "half") -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` channels of ``x`` [T, h, d]."""
    rd = cos.shape[-1]
    x = x.to(cos.dtype)
    rot, rest = x[..., :rd], x[..., rd:]
    c, s = cos[:, None, :], sin[:, None, :]
    if layout == "half":
        a, b = rot.chunk(2, dim=-1)
        turned = torch.cat((-b, a), dim=-1)
    else:
        a, b = rot[..., 0::2], rot[..., 1::2]
        turned = torch.stack((-b, a), dim=-1).flatten(-2)
    return torch.cat((rot * c + turned * s, rest), dim=-1)


def logn(t: int, seq_length: int, device: Any = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Qwen v1's logN query factor per position (1 before seq_length)."""
    p = torch.arange(t, dtype=dtype).to(device)
    return torch.where(p >= seq_length, torch.log(p + 1) / math.log(seq_length), torch.ones_like(p))


class Rotary:
    """The reference's rotary as a function of q or k, and its variants."""

    def __init__(self, ev: Evidence, t: int) -> None:
        self.ev, self.t = ev, t
        self.freqs = inv_freq(ev)
        self.rd = 0 if self.freqs is None else 2 * self.freqs.numel()
        self.dev, self.dtype = ev.out_ref.device, ev.work
        self.pos = torch.arange(t, dtype=self.dtype).to(self.dev)  # made on the host: no arange kernel to load
        self.seq_length = ev.facts.get("seq_length")
        self.ref_logn = bool(ev.facts.get("logn_attn")) and self.seq_length is not None and t > self.seq_length
        self.tables: dict[tuple[float, int, str], tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] = {}

    def apply(self, x: torch.Tensor, *, shift: float = 0.0, freqs: torch.Tensor | None = None, layout: str = "half",
              times: int = 1, rd: int | None = None, logn_on: bool | None = None, is_q: bool = True) -> torch.Tensor:
        f = self.freqs if freqs is None else freqs
        if rd is not None and rd != self.rd:
            f = freqs_for_base(self.base_guess(), rd, self.dev, self.dtype)
        cos, sin = self._table(shift, f, layout)
        out = x.to(self.dtype)
        for _ in range(times):
            out = rotate(out, cos, sin, layout)
        use_logn = self.ref_logn if logn_on is None else logn_on
        if is_q and use_logn and self.seq_length:
            out = out * logn(self.t, self.seq_length, self.dev, self.dtype)[:, None, None]
        return out

    def _table(self, shift: float, freqs: torch.Tensor, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for positions + ``shift``, kept for q's and k's variant alike (freqs by identity:
        the reference's, or a fitted base's, alive while this Rotary is)."""
        key = (shift, id(freqs), layout)
        if key not in self.tables:
            if len(self.tables) >= 8:  # a fit's many bases: only the latest few are asked again
                del self.tables[next(iter(self.tables))]
            self.tables[key] = (freqs, table(self.pos + shift, freqs, layout))
        return self.tables[key][1]

    def base_guess(self) -> float:
        """The base of the reference's own frequencies (read off its table: the NTK-scaled base
        when dynamic NTK is on past seq_length), else the config's."""
        if self.ev.ref.get("rope.cos") is not None and self.freqs is not None and self.freqs.numel() > 1:
            f1 = self.freqs[1].item()
            if 0 < f1 < 1:
                return float(f1 ** (-self.rd / 2))
        if self.ev.facts.get("rope_base"):
            return float(self.ev.facts["rope_base"])
        return 10000.0

    def config_base(self) -> float | None:
        base = self.ev.facts.get("rope_base")
        return float(base) if base else None

    def variants(self, is_q: bool = True) -> Iterator[tuple[str, dict[str, Any], str, Rot]]:
        """(name, params, cause, function) for each rotary variant."""
        yield ("rotary-twice", {}, "rotary applied twice (an attention kernel's own rotary on top of the model's)",
               lambda x: self.apply(x, times=2, is_q=is_q))
        yield ("rotary-none", {}, "rotary not applied", lambda x: self.apply(x, times=0, is_q=is_q))
        yield ("rotary-interleaved", {}, "rotary in the interleaved (GPT-J, pairs 2i/2i+1) layout instead of rotate-half",
               lambda x: self.apply(x, layout="interleaved", is_q=is_q))
        for k in (1, -1, 2, -2, 3, 4, 8):
            yield ("rotary-shift", {"k": k}, f"positions shifted by {k:+d} (position ids start at {k} instead of 0)",
                   lambda x, k=k: self.apply(x, shift=k, is_q=is_q))
        if self.rd:
            d = self.ev.facts.get("head_dim") or self.rd
            for rd in sorted({d, d // 2, d // 4, self.rd // 2} - {self.rd, 0}):
                yield ("rotary-partial", {"rotary_dim": rd, "expected": self.rd},
                       f"rotary over {rd} of the head's channels instead of {self.rd}",
                       lambda x, rd=rd: self.apply(x, rd=rd, is_q=is_q))
        if self.seq_length and self.t > self.seq_length and is_q:
            on = not self.ref_logn
            yield ("logn", {"logn": on, "seq_length": self.seq_length},
                   f"logN query scaling {'applied' if on else 'omitted'} past seq_length {self.seq_length} "
                   f"(positions >= {self.seq_length})", lambda x, on=on: self.apply(x, logn_on=on, is_q=is_q))
        if self.seq_length and self.t > self.seq_length and self.rd:
            yield from self._ntk(is_q)

    def _ntk(self, is_q: bool) -> Iterator[tuple[str, dict[str, Any], str, Rot]]:
        base = self.base_guess()
        rd = self.rd
        alpha = max(2 ** math.ceil(math.log2(self.t / self.seq_length) + 1) - 1, 1)
        ntk = freqs_for_base(base * alpha ** (rd / (rd - 2)), rd, self.dev, self.dtype)
        plain = freqs_for_base(base, rd, self.dev, self.dtype)
        rtol = 1e-6 if self.dtype == torch.float64 else 1e-4
        for label, f in (("on", ntk), ("off", plain)):
            if self.freqs is not None and torch.allclose(f.cpu(), self.freqs.cpu(), rtol=rtol):
                continue
            yield ("ntk", {"ntk": label, "alpha": alpha}, f"dynamic NTK {label} (alpha {alpha}) for a prompt past seq_length",
                   lambda x, f=f: self.apply(x, freqs=f, is_q=is_q))

    def fit_base(self, score: Callable[[torch.Tensor], float], good: float = 0.0) -> tuple[float, float]:
        """(base, residual) minimizing ``score(freqs)`` over the base: x100, /100, x10 and /10
        first (one scoring ``good`` or better ends the search), then a fit."""
        b0 = self.base_guess()
        seen: dict[float, float] = {}

        def f(b: float) -> float:
            if b not in seen:
                seen[b] = score(freqs_for_base(b, self.rd, self.dev, self.dtype))
            return seen[b]

        cfg = self.config_base()
        discrete = [b0 * r for r in (100.0, 0.01, 10.0, 0.1)] + [1.0 / b0] + ([cfg] if cfg and cfg != b0 else [])
        base = min(discrete, key=f)
        if f(base) > good:
            base = min([base, log_fit(f, b0 * 1e-4, b0 * 1e4, points=17, iters=20)], key=f)
        return base, f(base)


def base_result(rot: Rotary, base: float, res: float) -> Result | None:
    """The fitted base as a cause: against the reference's own base (NTK-scaled past seq_length),
    naming the config's base when that is what the candidate used; None when the fit is the
    reference's base itself (no base to blame)."""
    ref_base = rot.base_guess()
    ratio = base / ref_base
    if abs(ratio - 1.0) < 1e-3:
        return None
    cfg = rot.config_base()
    params = {"base": base, "reference_base": ref_base, "ratio": ratio}
    if cfg and abs(ref_base / cfg - 1.0) > 1e-3:  # the reference's table is NTK-scaled
        params["config_base"] = cfg
        if abs(base / cfg - 1.0) < 1e-3:
            return Result("rotary-base", "rotary", params, res,
                          f"rotary base {base:.4g} (the config's) where the reference uses its dynamic-NTK-scaled base "
                          f"{ref_base:.4g} past seq_length: dynamic NTK not applied")
        return Result("rotary-base", "rotary", params, res, f"rotary base {base:.4g} instead of the reference's "
                      f"dynamic-NTK-scaled {ref_base:.4g} (config {cfg:.4g}; x{ratio:.3g})")
    return Result("rotary-base", "rotary", params, res, f"rotary base {base:.4g} instead of {ref_base:.4g} (x{ratio:.3g})")


def _base_result(ev: Evidence, rot: Rotary, score: Callable[[torch.Tensor], float], good: float = 0.0) -> list[Result]:
    base, res = rot.fit_base(score, good)
    r = base_result(rot, base, res)
    return [] if r is None else [r]


@hypothesis("rotary-qk", ["attn.q_rot", "attn.k_rot"])
def rotary_qk(ev: Evidence) -> list[Result]:
    """q_rot/k_rot from the reference's q/k under each rotary variant."""
    pre = ev.r(ev.point.replace("_rot", ""))
    c = ev.out_cand
    if pre is None or pre.dim() != 3:
        return []
    rot = Rotary(ev, pre.shape[0])
    is_q = ev.point == "attn.q_rot"
    if rot.freqs is None or residual(ev.out_ref, rot.apply(pre, is_q=is_q)) > 1e-4:
        return []  # our rotary does not reproduce the reference's
    out = [Result(name, "rotary", params, residual(c, fn(pre)), cause) for name, params, cause, fn in rot.variants(is_q)]
    if not _found(out, ev):
        out += _base_result(ev, rot, lambda f: residual(c, rot.apply(pre, freqs=f, is_q=is_q)), ev.tolerance)
    return out


@hypothesis("rotary-table", ["rope.cos", "rope.sin"])
def rotary_table(ev: Evidence) -> list[Result]:
    """The cos/sin table under positions shifted by k, another base, interleaved layout, NTK."""
    c = ev.out_cand
    t = c.shape[0]
    rot = Rotary(ev, t)
    if rot.freqs is None or c.shape[-1] != rot.rd:
        return []
    k = 0 if ev.point == "rope.cos" else 1

    def tab(freqs: torch.Tensor, shift: float = 0.0, layout: str = "half") -> torch.Tensor:
        return table(rot.pos + shift, freqs, layout)[k]

    if residual(ev.out_ref, tab(rot.freqs)) > 1e-4:
        return []
    out = [Result("rotary-shift", "rotary", {"k": s}, residual(c, tab(rot.freqs, s)),
                  f"positions shifted by {s:+d} (position ids start at {s} instead of 0)") for s in (1, -1, 2, -2, 3, 4, 8)]
    out.append(Result("rotary-interleaved", "rotary", {}, residual(c, tab(rot.freqs, layout="interleaved")),
                      "rotary table in the interleaved layout instead of rotate-half"))
    out.append(Result("rotary-none", "rotary", {"label": "rotary-none"}, residual(c, tab(rot.freqs * 0)),
                      "rotary table of position 0 everywhere (cos 1, sin 0): no rotation"))
    other = table(rot.pos, rot.freqs)[1 - k]
    out.append(Result("rotary-table-swapped", "rotary", {"label": "rot-table:sin,cos"}, residual(c, other),
                      f"rope.{'cos' if k == 0 else 'sin'} holds the {'sin' if k == 0 else 'cos'} table: cos and sin exchanged"))
    if not _found(out, ev):
        out += _base_result(ev, rot, lambda f: residual(c, tab(f)), ev.tolerance)
    if not _found(out, ev):
        out.append(_freq_scale(ev, rot, lambda f: residual(c, tab(f))))
    return out


def _freq_scale(ev: Evidence, rot: Rotary, score: Callable[[torch.Tensor], float]) -> Result:
    """Every frequency scaled by one factor c (positions x c): the usual ones first, then a fit."""
    d, b0 = rot.rd, rot.base_guess()
    named = {"2": 2.0, "1/2": 0.5, "base^(-1/d) (frequency index from 1: exponent (2i+1)/d)": b0 ** (-1.0 / d),
             "base^(1/d)": b0 ** (1.0 / d)}
    label, c = min(named.items(), key=lambda kv: score(rot.freqs * kv[1]))
    if score(rot.freqs * c) > ev.tolerance:
        fit = log_fit(lambda x: score(rot.freqs * x), 1e-2, 1e2, points=25, iters=20)
        if score(rot.freqs * fit) < score(rot.freqs * c):
            label, c = None, fit
    what = f"x{c:.4g}" + (f" = {label}" if label else "")
    return Result("rotary-frequency-scale", "rotary", {"factor": c, "recognized": label, "label": f"rope-scale={c:.6g}"},
                  score(rot.freqs * c), f"rotary frequencies scaled by {what} (positions scaled alike)")


def _found(out: list[Result], ev: Evidence) -> bool:
    """Whether a discrete variant already explains the candidate: the base fit (~60 recomputes) is then
    not worth its cost."""
    return any(r.residual <= min(ev.tolerance, EXPLAINS * ev.identity) for r in out)

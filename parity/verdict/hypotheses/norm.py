"""Norm hypotheses at ``attn_in``/``mlp_in``/``final_norm``, recomputed from the reference's
input stream and the norm's own weight: another epsilon (fitted), epsilon outside the square
root, no weight, a (1 + weight) offset, LayerNorm instead of RMSNorm, no float32 upcast."""
from __future__ import annotations

import torch

from parity import dtypes
from parity.capture import probes as canon
from parity.verdict.hypotheses.registry import hypothesis
from parity.verdict.hypotheses.core import Evidence, Result, residual

NORM_POINTS = ["attn_in", "mlp_in", "final_norm"]


def norm_input(ev: Evidence) -> torch.Tensor | None:
    """The stream entering the norm at the focus probe."""
    if ev.point == "mlp_in":
        return ev.r("resid_mid")
    if ev.point == "attn_in":
        return ev.ref.get(canon.stream_into(ev.block))
    if ev.point == "final_norm":
        n = ev.facts.get("num_blocks")
        return None if not n else ev.ref.get(canon.stream_into(n))
    return None


def rms(x: torch.Tensor, w: torch.Tensor | None, eps: float, *, outside: bool = False, center: bool = False,
        low: torch.dtype | None = None) -> torch.Tensor:
    work = x.dtype
    x = x.to(low) if low is not None else x
    if center:
        x = x - x.mean(-1, keepdim=True)
    ms = x.pow(2).mean(-1, keepdim=True)
    y = x / (ms.sqrt() + eps) if outside else x * torch.rsqrt(ms + eps)
    y = y.to(work)
    return y if w is None else y * w


@hypothesis("norm", NORM_POINTS)
def norm(ev: Evidence) -> list[Result]:
    x, w, eps = norm_input(ev), ev.weights.get("norm.weight"), ev.weights.get("norm.eps")
    if x is None or w is None or eps is None:
        return []
    if residual(ev.out_ref, rms(x, w, eps)) > 1e-4:
        return []  # our RMSNorm does not reproduce the reference's
    c = ev.out_cand
    out = [
        Result("norm-eps-outside-root", "norm", {"eps": eps}, residual(c, rms(x, w, eps, outside=True)),
               f"norm epsilon added outside the square root (x / (sqrt(mean(x^2)) + eps), eps {eps:g})"),
        Result("norm-no-weight", "norm", {}, residual(c, rms(x, None, eps)), "norm weight not applied"),
        Result("norm-weight-offset", "norm", {}, residual(c, rms(x, w + 1.0, eps)), "norm weight applied as (1 + weight)"),
        Result("layernorm", "norm", {}, residual(c, rms(x, w, eps, center=True)), "LayerNorm (mean subtracted) instead of RMSNorm"),
    ]
    low = dtypes.half_precision(ev.dtype)
    if low is not None:
        out.append(_no_upcast(x, w, eps, c, low, ev.dtype))
    fitted = _fit_eps(x, w, c)
    if fitted is not None:
        out.append(Result("norm-eps", "norm", {"eps": fitted, "expected": eps}, residual(c, rms(x, w, fitted)),
                          f"norm epsilon {fitted:.3g} instead of {eps:g}"))
    return out


def _no_upcast(x: torch.Tensor, w: torch.Tensor, eps: float, c: torch.Tensor, low: torch.dtype, dtype: str) -> Result:
    """The norm in the activation dtype; where its mean of squares overflows that dtype (float16
    past |x| = 256) the cause is the overflow: those tokens' rows collapse to 0."""
    pred = rms(x, w, eps, low=low)
    sq = x.to(low).pow(2)
    over = (~torch.isfinite(sq.mean(-1))).cpu().nonzero().flatten()  # on the host: a few numbers
    if over.numel():
        first, peak = int(over[0]), float(x.abs().max())
        return Result("norm-overflow", "norm", {"dtype": dtype, "tokens": int(over.numel()), "first_token": first,
                                                "max_abs_input": peak},
                      residual(c, pred),
                      f"overflow: the norm's mean of squares computed in {dtype} (no float32 upcast) overflows at "
                      f"{over.numel()} token(s), first token {first} (|x| up to {peak:.3g}, x^2 beyond {dtype}'s "
                      "range): those rows collapse to 0; compute the norm's statistics in float32")
    return Result("norm-no-upcast", "norm", {"dtype": dtype}, residual(c, pred), f"norm computed in {dtype} (no float32 upcast)")


@hypothesis("norm-variants", NORM_POINTS, generic=True)
def norm_variants(ev: Evidence) -> list[Result]:
    """The norm's formula and reduction axis varied (after the specific norm hypotheses)."""
    x, w, eps = norm_input(ev), ev.weights.get("norm.weight"), ev.weights.get("norm.eps")
    if x is None or w is None or eps is None or residual(ev.out_ref, rms(x, w, eps)) > 1e-4:
        return []
    c = ev.out_cand
    ms = x.pow(2).mean(-1, keepdim=True)
    forms = [
        ("norm-formula:no-rms", "the norm's division by the RMS left out (only the weight applied)", x * w),
        ("norm-formula:x*rms", "the norm multiplies by the RMS instead of dividing (sqrt where rsqrt belongs)",
         x * torch.sqrt(ms + eps) * w),
        ("norm-formula:x/w", "the norm divides by its weight instead of multiplying", rms(x, None, eps) / w),
        ("norm-axis:tokens", "the norm's mean of squares taken over the tokens instead of the channels",
         x * torch.rsqrt(x.pow(2).mean(0, keepdim=True) + eps) * w),
        ("norm-axis:elementwise", "the norm's mean of squares not reduced (each element divided by its own magnitude)",
         x * torch.rsqrt(x.pow(2) + eps) * w),
        ("norm-formula:x*ms", "the norm multiplies by mean(x^2) + eps (its rsqrt left out)", x * (ms + eps) * w),
        ("norm-formula:rsqrt-only", "the norm's output is rsqrt(mean(x^2) + eps) * weight: x itself left out of the product",
         torch.rsqrt(ms + eps).expand_as(x) * w),
    ]
    forms += [(f"norm-formula:pow{p}", f"the norm's mean taken over x^{p} instead of x^2",
               x * torch.rsqrt(x.pow(p).mean(-1, keepdim=True) + eps) * w) for p in (4,)]
    return [Result("norm-variant", "norm", {"label": label}, residual(c, pred), cause) for label, cause, pred in forms]


def _fit_eps(x: torch.Tensor, w: torch.Tensor, c: torch.Tensor) -> float | None:
    """The epsilon that best explains ``c`` = x * rsqrt(mean(x^2) + eps) * w, per token, median."""
    wx = x * w
    num = (wx * c).sum(-1)
    den = (c * c).sum(-1)
    ok = den > 0
    if not ok.any():
        return None
    r = (num[ok] / den[ok])  # = sqrt(ms + eps) per token
    ms = x.pow(2).mean(-1)[ok]
    eps = (r * r - ms).cpu().median().item()
    return eps if eps > -0.5 * ms.min().item() and eps != 0 else None

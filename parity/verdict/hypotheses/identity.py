"""Tensor identity search: is the candidate's tensor, up to rounding and one scale factor,
another tensor the reference computed -- in the focus block or its input (the block's input
stream, the previous block's output and residual, the operands of a residual add, q/k/v...),
a sum or difference of two of them, or (at a norm's output) the norm of one of them?

One test names skipped operations (a norm skipped: the output is its input), crossed wires
(k where q belongs, the residual instead of the stream) and doubled or missing adds, without a
hypothesis per bug. The pool is what parity.run.targeted put in the evidence beyond the focus
(its CONTEXT, taken from the reference's capture: no extra forward)."""
from __future__ import annotations

import itertools
from typing import Any

import torch

from parity.verdict.hypotheses.core import EXPLAINS, Evidence, Result, residual, sumsq
from parity.verdict.hypotheses.registry import hypothesis

NORM_POINTS = ("attn_in", "mlp_in", "final_norm")
#: scale factors named as such (others are a fitted scale on the matched tensor)
NAMED_SCALES = {1.0: "", 2.0: "2*", -1.0: "-", 0.5: "0.5*"}


def _rms(x: torch.Tensor, w: torch.Tensor | None, eps: float) -> torch.Tensor:
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y if w is None else y * w


def pool(ev: Evidence) -> dict[str, torch.Tensor]:
    """The reference tensors of the evidence the focus could have been computed as, flat [T, n]."""
    c = ev.out_cand
    n = c.numel()
    out = {}
    for name in ev.ref:
        if name == ev.probe or name in ("rope.cos", "rope.sin") and ev.point not in ("rope.cos", "rope.sin"):
            continue
        t = ev.ref[name]
        if t.numel() == n and t.shape[0] == c.shape[0]:
            out[name] = t.reshape(c.shape[0], -1)
    return out


def candidates(ev: Evidence) -> list[tuple[str, torch.Tensor]]:
    """(expression, tensor) for each tensor of the pool, each sum and difference of two of them
    (the operands of an add crossed), and at a norm's output, the norm of each of those."""
    base = pool(ev)
    exprs: list[tuple[str, torch.Tensor]] = list(base.items())
    for (a, ta), (b, tb) in itertools.combinations(base.items(), 2):
        exprs += [(f"{a}+{b}", ta + tb), (f"{a}-{b}", ta - tb), (f"{b}-{a}", tb - ta)]
    if ev.point in NORM_POINTS:
        w, eps = ev.weights.get("norm.weight"), ev.weights.get("norm.eps")
        if w is not None and eps is not None:
            exprs += [(f"norm({e})", _rms(t, w, eps)) for e, t in list(exprs)]
    return exprs


def _fit(c: torch.Tensor, t: torch.Tensor) -> tuple[float, float]:
    """(least-squares scale s, residual of s * t)."""
    den, num = torch.stack((sumsq(t), (t * c).sum())).tolist()
    if den <= 0:
        return 0.0, float("inf")
    s = num / den
    return s, residual(c, s * t)


@hypothesis("tensor-identity", ["*"], generic=True)
def identity(ev: Evidence) -> list[Result]:
    """The best few expressions of the pool, each with its fitted scale (named when 1, 2, -1, 1/2)."""
    if ev.point in ("logits", "embed"):
        return []
    c = ev.out_cand.reshape(ev.out_cand.shape[0], -1)
    scored: list[tuple[float, str, float]] = []
    for expr, t in candidates(ev):
        s, res = _fit(c, t)
        scored.append((res, expr, s))
    scored.sort()
    if not scored:
        return []
    # expressions equal up to rounding (-norm(r - (a + r)) is norm(a)): the simplest one, scale 1 first
    best = scored[0][0]
    same = [x for x in scored if x[0] <= max(1.25 * best, min(ev.tolerance, EXPLAINS * ev.identity)) + 1e-12]
    scored = sorted(same, key=lambda x: (_complexity(x[1]), abs(x[2] - 1.0) > 2e-3)) + [x for x in scored if x not in same]
    out = []
    for res, expr, s in scored[:3]:
        named = next((p for v, p in NAMED_SCALES.items() if abs(s - v) <= 2e-3 * abs(v)), None)
        if named is None:
            continue  # another scale on top of a crossed wire: two faults, not one name
        label = "expr:" + named + expr
        out.append(Result("tensor-identity", "identity", {"expression": named + expr, "scale": s, "label": label}, res,
                          _phrase(ev, named + expr)))
    return out


def _complexity(expr: str) -> int:
    return sum(expr.count(op) for op in ("+", "-", "norm("))


def _short(name: str, block: int | None) -> str:
    if block is not None and name.startswith(f"blocks.{block}."):
        return name.split(".", 2)[2]
    return name


def _phrase(ev: Evidence, expr: str) -> str:
    """The cause in words: what the candidate's tensor is."""
    words = expr
    for name in sorted(ev.ref, key=len, reverse=True):
        words = words.replace(name, f"<{_short(name, ev.block)}>") if name in words else words
    words = words.replace("<", "").replace(">", "")
    what = {"attn_in": "the attention norm's output", "mlp_in": "the MLP norm's output", "final_norm": "the final norm's output",
            "resid_mid": "the stream after the attention add", "resid_post": "the stream after the MLP add"}.get(
        ev.point, ev.point)
    extra = ""
    if ev.point in NORM_POINTS and not expr.startswith("norm(") and "norm(" not in expr:
        extra = " (the norm skipped)"
    return f"{ev.probe} ({what}) is the reference's {words}{extra}: an operation skipped or a wire crossed"


def describe(params: dict[str, Any]) -> str:
    return str(params.get("expression"))

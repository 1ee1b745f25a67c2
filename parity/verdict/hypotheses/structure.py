"""The error's structure at the focus probe, as evidence when no hypothesis fits: which heads,
which channels, from which token, and whether it tracks the values (scale-like) or is the same
on every token (offset-like). Plain statistics on ``cand - ref``; a few numbers to the host."""
from __future__ import annotations

from typing import Any

from parity.verdict.hypotheses.core import Evidence, sumsq

#: a part of the tensor "carries" the error when it holds at least this share of its energy
SHARE = 0.9


def structure(ev: Evidence) -> dict[str, Any]:
    """Facts about the error at the focus (each key only when it says something)."""
    r, c = ev.out_ref, ev.out_cand
    if r.shape != c.shape or r.shape[0] == 0:
        return {}
    e = c - r
    total = sumsq(e).item()
    if not total > 0:
        return {}
    out: dict[str, Any] = {}
    t = e.shape[0]
    per_tok = sumsq(e.reshape(t, -1), 1).cpu()
    off = (per_tok > 1e-6 * per_tok.max()).tolist()
    first = off.index(True)
    if first > 0 and all(off[first:]):
        out["from_token"] = first
    if e.dim() == 3 and e.shape[1] > 1:
        per_head = sumsq(e, (0, 2)).cpu()
        order = per_head.argsort(descending=True).tolist()
        acc, heads = 0.0, []
        for h in order:
            heads.append(h)
            acc += per_head[h].item()
            if acc >= SHARE * total:
                break
        if len(heads) < e.shape[1]:
            out["heads"] = sorted(heads)
            out["num_heads"] = e.shape[1]
    flat = e.reshape(t, -1)
    per_ch = sumsq(flat, 0).cpu()
    k = max(1, per_ch.numel() // 100)
    top = per_ch.topk(k)
    if top.values.sum().item() >= 0.5 * total and k < per_ch.numel():
        out["channels"] = sorted(top.indices.tolist())[:8]
    rf = r.reshape(t, -1)
    den = sumsq(rf).item()
    if den > 0:
        alpha = (flat * rf).sum().item() / den
        left = sumsq(flat - alpha * rf).item()
        if left <= 0.25 * total:
            out["scale_like"] = 1.0 + alpha
    mean = flat.mean(0, keepdim=True)
    if t >= 4 and sumsq(flat - mean).item() <= 0.25 * total:
        out["offset_like"] = True
    return out


def phrase(s: dict[str, Any]) -> str:
    """The structure in words ('' when it shows nothing particular)."""
    parts = []
    if "from_token" in s:
        parts.append(f"tokens before {s['from_token']} match, every later token is off")
    if "heads" in s:
        parts.append(f"the error sits in head(s) {', '.join(map(str, s['heads']))} of {s['num_heads']}")
    if "channels" in s:
        parts.append(f"over half of it in channel(s) {', '.join(map(str, s['channels']))}")
    if "scale_like" in s:
        parts.append(f"it tracks the values (scale-like, about x{s['scale_like']:.3g} overall)")
    if s.get("offset_like"):
        parts.append("it is about the same on every token (offset-like)")
    if not parts:
        parts.append("spread over tokens, heads and channels, neither a scale nor an offset")
    return "; ".join(parts)

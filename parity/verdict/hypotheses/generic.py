"""Hypotheses for any probe: a scale factor, a per-channel constant offset (a bias missing or
extra), a permutation of heads (q|k|v split order, per-group interleave, head order) or of the
channels within each head (llama.cpp's q/k pair order), and a transposed square projection
weight."""
from __future__ import annotations

import torch

from parity.verdict.hypotheses.registry import hypothesis
from parity.verdict.hypotheses.core import Evidence, Result, l2, recognise, residual, sumsq

ANY = ["*"]
HEAD_POINTS = ["attn.q", "attn.k", "attn.v", "attn.q_rot", "attn.k_rot"]


@hypothesis("scale", ANY)
def scale(ev: Evidence) -> list[Result]:
    """cand = s * ref: the least-squares s, and whether it is a recognizable factor."""
    r, c = ev.out_ref, ev.out_cand
    den, num = torch.stack(((r * r).sum(), (r * c).sum())).tolist()
    if den == 0:
        return []
    s = num / den
    if abs(s - 1.0) < 1e-3:
        return []  # no scale to speak of
    name = recognise(s, ev.facts)
    what = f"x{s:.4g}" + (f" (recognized: {name})" if name else "")
    return [Result("scale", "scale", {"factor": s, "recognized": name}, residual(c, s * r),
                   f"{ev.probe} is the reference scaled by {what}")]


def _bias_match(offset: torch.Tensor, ev: Evidence) -> tuple[str | None, str | None]:
    """Which reference bias the offset is (minus: dropped; plus: added twice)."""
    flat = offset.reshape(-1)
    n = flat.numel()
    for role, b in ev.weights.get("biases", {}).items():
        b = b.reshape(-1)
        for start in range(0, b.numel() - n + 1, n):
            part = b[start:start + n]
            scale, plus, minus = (x ** 0.5 for x in torch.stack((sumsq(part), sumsq(flat + part), sumsq(flat - part))).tolist())
            if scale == 0:
                continue
            if plus <= 0.05 * scale:
                return "missing", _slice_label(role, start, n, b.numel())
            if minus <= 0.05 * scale:
                return "extra", _slice_label(role, start, n, b.numel())
    return None, None


def _slice_label(role: str, start: int, n: int, total: int) -> str:
    if n == total:
        return role
    parts = "qkv" if total == 3 * n else None
    return f"{role}[{parts[start // n]}]" if parts else f"{role}[{start}:{start + n}]"


def _has_bias(ev: Evidence) -> bool:
    """Whether the reference's computation producing the focus probe has a bias to miss."""
    biases = ev.weights.get("biases") or {}
    if ev.point.startswith("attn.") or ev.point == "attn_in":
        return bool([n for n in biases if n.split(".")[-1] not in ("o_proj", "c_proj", "out_proj", "dense", "wo")]) \
            or any(f"attn.{x}.bias" in ev.weights for x in "qkv")
    if ev.point == "attn_out":
        return "o_proj.bias" in ev.weights
    if ev.point == "mlp_out":
        return bool(biases)
    return False


@hypothesis("bias", ANY)
def bias(ev: Evidence) -> list[Result]:
    """cand = ref + c with one constant per channel over all tokens (a bias missing or extra)."""
    r, c = ev.out_ref, ev.out_cand
    if r.shape[0] < 4:  # too few tokens to tell a constant from anything
        return []
    off = (c - r).mean(dim=0, keepdim=True)
    kind, which = _bias_match(off[0], ev)
    norm = l2(off)
    if kind == "missing":
        cause = f"the bias of {which} is dropped (a constant per-channel offset on every token equal to minus that bias)"
    elif kind == "extra":
        cause = f"the bias of {which} is added twice (a constant per-channel offset equal to that bias)"
    elif _has_bias(ev):
        cause = (f"a constant per-channel offset on every token at {ev.probe} (norm {norm:.3g}): "
                 "a bias missing or extra in the projection producing it")
    else:
        kind = "extra"
        cause = (f"an extra bias: a constant per-channel offset on every token at {ev.probe} (norm {norm:.3g}), "
                 "where the reference adds none")
    return [Result("bias", "bias", {"offset_norm": norm, "bias": which, "kind": kind},
                   residual(c, r + off), cause)]


# --------------------------------------------------------------------------- permutations


def _units(ev: Evidence) -> tuple[torch.Tensor, list[str]] | None:
    """The reference's q|k|v heads of the block as one pool of head units, with labels."""
    pool, labels = [], []
    point = ev.point.replace("_rot", "")
    rot = ev.point.endswith("_rot")
    for kind in "qkv":
        t = ev.r(f"attn.{kind}_rot" if rot and kind != "v" else f"attn.{kind}")
        if t is None or t.dim() != 3:
            if kind == point[-1]:
                return None
            continue
        pool.append(t)
        labels += [f"{kind}{i}" for i in range(t.shape[1])]
    return (torch.cat(pool, dim=1), labels) if pool else None


def _layouts(nq: int, nkv: int) -> dict[str, list[str]]:
    """Head-unit orders a fused q|k|v row block is read with, by name: each is the list of
    reference units the candidate takes as q0.., k0.., v0.. when it splits contiguous rows
    with that layout."""
    contiguous = [f"q{i}" for i in range(nq)] + [f"k{i}" for i in range(nkv)] + [f"v{i}" for i in range(nkv)]
    per = nq // nkv if nkv else 0
    out: dict[str, list[str]] = {}
    if per and nkv:
        q, k, v = [], [], []
        for g in range(nkv):
            base = g * (per + 2)
            q += [contiguous[base + j] for j in range(per)]
            k.append(contiguous[base + per])
            v.append(contiguous[base + per + 1])
        out["per-KV-group interleaved (Megatron) split of a q|k|v fused weight"] = q + k + v
    sizes = {"q": nq, "k": nkv, "v": nkv}
    for order in ("kqv", "qvk", "vkq", "kvq", "vqk"):  # a weight stacked in `order`, split as q|k|v
        out[f"fused weight stacked {'|'.join(order)}, split as q|k|v"] = [f"{p}{i}" for p in order for i in range(sizes[p])]
    return out


@hypothesis("permutation", HEAD_POINTS)
def permutation(ev: Evidence) -> list[Result]:
    """Each candidate head is some reference head of the block (q, k or v): which."""
    got = _units(ev)
    c = ev.out_cand
    if got is None or c.dim() != 3:
        return []
    pool, labels = got
    if pool.shape[-1] != c.shape[-1]:
        return []
    err = torch.stack([sumsq(pool - c[:, j:j + 1], dim=(0, 2)) for j in range(c.shape[1])])  # [cand heads, pool]
    pick = err.cpu().argmin(dim=1).tolist()
    mapping = [labels[i] for i in pick]
    pred = torch.stack([pool[:, i] for i in pick], dim=1)  # not pool[:, pick]: an index kernel, cold in a run
    kind = ev.point.replace("attn.", "")[0]
    own = [f"{kind}{i}" for i in range(c.shape[1])]
    if mapping == own:
        return []  # no permutation: the heads are where they belong
    nq = sum(1 for x in labels if x[0] == "q")
    nkv = sum(1 for x in labels if x[0] == "k")
    layout = None
    for name, seq in _layouts(nq, nkv).items():
        start = {"q": 0, "k": nq, "v": nq + nkv}[kind]
        if seq[start:start + c.shape[1]] == mapping:
            layout = name
            break
    sources = {m[0] for m in mapping}
    separate = any(f"attn.{x}.weight" in ev.weights for x in "qkv")
    if layout and layout.startswith("fused weight") and separate and len(sources) == 1:
        # separate q/k/v projections (LLaMA, Qwen2): no fused weight to have been stacked
        src = sources.pop()
        layout = f"{kind} holds {src}'s heads"
        what = (f"{kind} holds the reference's {src} heads: {kind} and {src} exchanged (their projections, weights or "
                "outputs swapped)")
    elif layout is None and len(sources) == 1 and kind not in sources:
        src = sources.pop()
        what = f"{kind} holds the reference's {src} heads: {src} used where {kind} belongs (a wire crossed)"
    else:
        what = layout or "heads taken from the wrong place: " + ", ".join(f"{o}<-{m}" for o, m in zip(own, mapping) if o != m)
    return [Result("permutation", "permutation", {"mapping": mapping, "layout": layout}, residual(c, pred),
                   f"{ev.probe}: {what}")]


def pair_order(d: int) -> list[int]:
    """Channel order of llama.cpp's q/k row permutation within a head (its converter's
    ``permute``, for the rope that rotates pairs 2i, 2i+1): channel 2i <- i, 2i+1 <- d/2 + i."""
    return [i // 2 + (d // 2 if i % 2 else 0) for i in range(d)]


def half_order(d: int) -> list[int]:
    """The inverse: channel i <- 2i, d/2 + i <- 2i + 1 (pairs read back as halves)."""
    return [2 * i for i in range(d // 2)] + [2 * i + 1 for i in range(d // 2)]


@hypothesis("channel-permutation", HEAD_POINTS)
def channel_permutation(ev: Evidence) -> list[Result]:
    """Every head's channels in another order (the same for each head): which reference channel
    each candidate channel is -- recognized when it is llama.cpp's q/k pair order or its inverse
    (a checkpoint converted for the other rotary layout, or its permutation left out)."""
    r, c = ev.out_ref, ev.out_cand
    if r.dim() != 3 or c.shape != r.shape or r.shape[-1] < 4:
        return []
    d = r.shape[-1]
    rf, cf = r.reshape(-1, d), c.reshape(-1, d)
    # ||c_j - r_i||^2 over tokens and heads, from one [d, d] product (layouts of x @ W.T: warm GEMMs)
    cross = cf.T.contiguous() @ rf.T.contiguous().T
    err = sumsq(cf, 0)[:, None] + sumsq(rf, 0)[None, :] - 2 * cross
    pick = err.cpu().argmin(dim=1).tolist()
    if pick == list(range(d)) or sorted(pick) != list(range(d)):
        return []  # no reordering, or not a permutation
    onehot = torch.zeros(d, d, dtype=rf.dtype)
    onehot[torch.arange(d), torch.tensor(pick)] = 1.0  # row j picks reference channel pick[j]
    pred = (rf @ onehot.to(rf.device).T).reshape(r.shape)
    kind = ev.point.replace("attn.", "").replace("_rot", "")
    if pick == pair_order(d):
        layout = "pairs"
        what = (f"{kind} channels in llama.cpp's pair order within each head (channel 2i <- i, 2i+1 <- d/2+i): "
                "the q/k rows permuted for a rope rotating pairs where the model rotates halves")
    elif pick == half_order(d):
        layout = "halves"
        what = (f"{kind} channels in rotate-half order within each head where pairs are expected (channel i <- 2i, "
                "d/2+i <- 2i+1): the converter's q/k permutation for a pair-rotating rope left out or undone")
    else:
        layout = None
        moved = [f"{j}<-{i}" for j, i in enumerate(pick) if i != j]
        what = f"{kind} channels reordered within each head: " + ", ".join(moved[:8]) + (" ..." if len(moved) > 8 else "")
    return [Result("channel-permutation", "permutation", {"layout": layout, "head_dim": d,
                                                          "mapping": None if layout else pick},
                   residual(c, pred), f"{ev.probe}: {what}")]


@hypothesis("transposed-weight", ["attn.q", "attn.k", "attn.v"])
def transposed(ev: Evidence) -> list[Result]:
    """The projection applied with its square weight transposed (x @ W instead of x @ W.T)."""
    x = ev.r("attn_in")
    w = ev.weights.get(f"{ev.point}.weight")
    if x is None or w is None or w.shape[0] != w.shape[1]:
        return []
    b = ev.weights.get(f"{ev.point}.bias")
    pred = x @ w.T.contiguous().T + (0 if b is None else b)  # x @ W, with the layout of x @ W.T (its GEMM is warm)
    base = x @ w.T + (0 if b is None else b)
    if residual(ev.out_ref.reshape(base.shape), base) > 1e-3:
        return []  # our model of the projection does not reproduce the reference
    c = ev.out_cand.reshape(pred.shape)
    return [Result("transposed-weight", "transpose", {"projection": ev.point}, residual(c, pred),
                   f"the {ev.point} projection's square weight is used transposed (x @ W instead of x @ W.T)")]

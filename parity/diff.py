"""Diff statistics: pure functions over tensors, computed where the tensors live.

Everything accumulates in float64, in chunks (so a [4096, 151936] logits tensor never
gets a full float64 copy), and is brought to the host in one transfer at the end.
NaN/Inf never crash: they are counted, and an element that is non-finite on one side
only counts as an infinite error.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from parity.tolerances import Tolerance

FP16_MAX = 65504.0
CHUNK = 1 << 22
REL_EPS = 1e-6


@dataclass
class TensorStats:
    shape: list[int]
    dtype: str
    mean: float
    sum: float
    abs_max: float
    nan: int
    inf: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DiffStats:
    numel: int
    max_abs_err: float
    mean_abs_err: float
    max_rel_err: float
    cosine: float
    snr_db: float
    nrmse: float
    n_bad: int
    n_nonfinite_mismatch: int
    worst_index: list[int]
    worst_ref: float
    worst_cand: float

    @property
    def passed(self) -> bool:
        return self.n_bad == 0 and self.n_nonfinite_mismatch == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _flat_chunks(t: torch.Tensor) -> list[torch.Tensor]:
    flat = t.detach().reshape(-1)
    return list(flat.split(CHUNK)) if flat.numel() else []


def tensor_stats(t: torch.Tensor) -> TensorStats:
    """Mean, sum, max |x| (NaN ignored), NaN and Inf counts of one tensor."""
    acc = torch.zeros(4, dtype=torch.float64, device=t.device)  # sum, absmax, nan, inf
    for ch in _flat_chunks(t):
        x = ch.to(torch.float64)
        nan = torch.isnan(x)
        acc[0] += x.sum()
        acc[1] = torch.maximum(acc[1], torch.where(nan, 0.0, x.abs()).max())
        acc[2] += nan.sum()
        acc[3] += torch.isinf(x).sum()
    s, absmax, nan_n, inf_n = acc.tolist()
    n = t.numel()
    return TensorStats(list(t.shape), str(t.dtype).removeprefix("torch."), s / n if n else 0.0, s, absmax, int(nan_n), int(inf_n))


# Slots of the on-device accumulator used by compare().
_ERR_SUM, _REL_MAX, _BAD, _MISMATCH, _DOT, _RR, _CC, _NOISE = range(8)


def _compare_chunk(r: torch.Tensor, c: torch.Tensor, tol: Tolerance, eps: float, acc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rf, cf = torch.isfinite(r), torch.isfinite(c)
    both = rf & cf
    same_nonfinite = ~rf & ~cf & ((torch.isnan(r) & torch.isnan(c)) | (r == c))
    mismatch = ~both & ~same_nonfinite
    r0 = torch.where(both, r, 0.0)
    c0 = torch.where(both, c, 0.0)
    d = (r0 - c0).abs()
    err = torch.where(mismatch, math.inf, d)
    rel = torch.where(mismatch, math.inf, d / (r0.abs() + eps))
    bad = d > (tol.atol + tol.rtol * r0.abs())
    acc[_ERR_SUM] += err.sum()
    acc[_REL_MAX] = torch.maximum(acc[_REL_MAX], rel.max())
    acc[_BAD] += bad.sum()
    acc[_MISMATCH] += mismatch.sum()
    acc[_DOT] += (r0 * c0).sum()
    acc[_RR] += (r0 * r0).sum()
    acc[_CC] += (c0 * c0).sum()
    acc[_NOISE] += (d * d).sum()
    m, i = err.max(dim=0)
    return m, i


def compare(ref: torch.Tensor, cand: torch.Tensor, tol: Tolerance, eps: float = REL_EPS) -> DiffStats:
    """Error statistics of ``cand`` against ``ref`` (same shape, same device)."""
    if ref.shape != cand.shape:
        raise ValueError(f"shape mismatch {tuple(ref.shape)} vs {tuple(cand.shape)}")
    n = ref.numel()
    acc = torch.zeros(8, dtype=torch.float64, device=cand.device)
    maxes, idxs = [], []
    for k, (rc, cc) in enumerate(zip(_flat_chunks(ref), _flat_chunks(cand))):
        m, i = _compare_chunk(rc.to(torch.float64), cc.to(torch.float64), tol, eps, acc)
        maxes.append(m)
        idxs.append(i + k * CHUNK)
    if not maxes:
        return DiffStats(0, 0.0, 0.0, 0.0, 1.0, math.inf, 0.0, 0, 0, [], 0.0, 0.0)
    m_all = torch.stack(maxes)
    j = int(torch.argmax(m_all).item()) if m_all.numel() > 1 else 0
    flat_idx = torch.stack(idxs)[j]
    host = torch.cat([acc, m_all[j : j + 1], flat_idx.to(torch.float64).reshape(1)]).tolist()
    err_sum, rel_max, bad, mismatch, dot, rr, cc, noise, max_err, widx = host
    widx = int(widx)
    return DiffStats(
        numel=n,
        max_abs_err=max_err,
        mean_abs_err=err_sum / n,
        max_rel_err=rel_max,
        cosine=_cosine(dot, rr, cc),
        snr_db=_snr_db(rr, noise),
        nrmse=_nrmse(rr, noise),
        n_bad=int(bad),
        n_nonfinite_mismatch=int(mismatch),
        worst_index=_unravel(widx, list(ref.shape)),
        worst_ref=float(ref.reshape(-1)[widx].item()),
        worst_cand=float(cand.reshape(-1)[widx].item()),
    )


def _cosine(dot: float, rr: float, cc: float) -> float:
    if rr == 0.0 and cc == 0.0:
        return 1.0
    if rr == 0.0 or cc == 0.0:
        return 0.0
    return dot / math.sqrt(rr * cc)


def _snr_db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _nrmse(signal: float, noise: float) -> float:
    if noise == 0.0:
        return 0.0
    if signal == 0.0:
        return math.inf
    return math.sqrt(noise / signal)


def _unravel(flat: int, shape: list[int]) -> list[int]:
    out = []
    for dim in reversed(shape):
        out.append(flat % dim)
        flat //= dim
    return list(reversed(out))


def fp16_headroom(abs_max: float) -> float:
    """max |x| as a fraction of the float16 range; > 1 overflows float16."""
    return abs_max / FP16_MAX


@dataclass
class TokenProfile:
    """Per-token shape of the error of one probe (dim 0 = tokens), computed on device.

    ``first_token_err`` / ``later_tokens_err``: max |ref - cand| at token 0 / at tokens >= 1
    (inf where one side is non-finite); ``scale_fit_nrmse``: the nrmse left after fitting one
    scalar per token (``cand_t ~ a_t * ref_t``): near 0 when the error is a per-token rescale,
    as a norm with the wrong epsilon produces; ``token_scale_min/max``: range of those a_t.
    """

    first_token_err: float
    later_tokens_err: float | None
    scale_fit_nrmse: float
    token_scale_min: float
    token_scale_max: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def token_profile(ref: torch.Tensor, cand: torch.Tensor) -> TokenProfile | None:
    """Per-token error profile of two same-shape tensors whose dim 0 is tokens."""
    if ref.dim() < 2 or ref.shape[0] < 1 or ref.numel() == 0:
        return None
    r = ref.detach().reshape(ref.shape[0], -1).to(torch.float64)
    c = cand.detach().reshape(cand.shape[0], -1).to(torch.float64)
    both = torch.isfinite(r) & torch.isfinite(c)
    d = torch.where(both, (r - c).abs(), math.inf)
    per_tok = d.max(dim=1).values
    r0, c0 = torch.where(both, r, 0.0), torch.where(both, c, 0.0)
    rr = (r0 * r0).sum(dim=1)
    a = torch.where(rr > 0, (r0 * c0).sum(dim=1) / rr.clamp_min(1e-300), 1.0)
    resid = ((c0 - a[:, None] * r0) ** 2).sum()
    head = torch.stack([per_tok[0], per_tok[1:].max() if r.shape[0] > 1 else per_tok[0],
                        resid, rr.sum(), a.min(), a.max()]).tolist()
    first, later, res, total, amin, amax = head
    return TokenProfile(first, later if r.shape[0] > 1 else None,
                        math.sqrt(res / total) if total > 0 else 0.0, amin, amax)

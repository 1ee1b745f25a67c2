"""Cases for the fused (Triton) statistics, shared by the CPU interpreter test and the GPU
test: each builds (reference, candidate); ``check_case`` compares every slot of the fused
vector with the eager definition in parity.compare.diff (and the CPU for GPU tensors)."""
from __future__ import annotations

import math

import pytest
import torch

from parity.compare import diff

from parity.compare import fused
from parity.compare.tolerances import Tolerance

TOL = Tolerance(1e-2, 1e-2)


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _noisy(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float16, scale: float = 1e-3):
    r = torch.randn(shape, generator=_g(seed))
    return r, (r + scale * torch.randn(shape, generator=_g(seed + 1))).to(dtype)


def _specials():
    r, c = _noisy((6, 300), 3, torch.float32)
    r[0, 3], c[0, 3] = math.inf, math.inf  # same infinity: not a mismatch
    r[1, 4], c[1, 4] = math.nan, math.nan  # NaN on both sides: not a mismatch
    c[2, 5] = math.nan  # NaN in the candidate only
    c[3, 6] = -math.inf  # Inf in the candidate only
    r[4, 7] = math.inf  # Inf in the reference only
    r[5, 8], c[5, 8] = math.inf, -math.inf  # both non-finite, different: a mismatch
    r[5, 9], c[5, 9] = math.nan, math.inf
    return r, c


def _boundary():
    """Errors exactly at atol + rtol * |ref| pass; just above fail (values exact in binary)."""
    r = torch.tensor([[1.0, 1.0, 2.0, 0.0]])
    c = torch.tensor([[1.75, 1.875, 3.25, 0.5]])
    return r, c, Tolerance(0.25, 0.5)


def _strided_qkv():
    qkv = torch.randn(17, 3 * 256, generator=_g(4))  # a fused QKV buffer; k is a strided view
    k = qkv[:, 256:512]
    return k.clone().reshape(17, 4, 64), (k * (1 + 1e-3)).reshape(17, 4, 64)


def _transposed():
    r = torch.randn(64, 40, generator=_g(5))
    return r.t(), (r + 1e-2).t()  # rows not contiguous: copied first


def _ties():
    r = torch.zeros(5, 70)
    c = r.clone()
    c[1, 10] = c[3, 2] = c[3, 60] = 0.5  # equal worst errors: the first in row-major order
    return r, c


def _scaled_rows():
    r = torch.randn(9, 128, generator=_g(6))
    return r, r * torch.linspace(0.5, 1.5, 9).reshape(9, 1)  # per-token rescale: scale fit ~0


CASES = {
    "fp16": lambda: _noisy((7, 33), 0),
    "bf16": lambda: _noisy((12, 1000), 1, torch.bfloat16),
    "fp32": lambda: _noisy((3, 5, 300), 2, torch.float32),
    "wide-rows-tiled": lambda: _noisy((2, 5000), 7),  # few rows: each split into column tiles
    "one-row": lambda: _noisy((40,), 8),
    "one-row-strided": lambda: tuple(t[::3] for t in _noisy((90,), 12, torch.float32)),
    "scalar": lambda: _noisy((), 9, torch.float32),
    "specials": _specials,
    "strided-view": _strided_qkv,
    "transposed": _transposed,
    "ties": _ties,
    "zeros": lambda: (torch.zeros(4, 8), torch.zeros(4, 8)),
    "per-token-scale": _scaled_rows,
    "tolerance-boundary": _boundary,
}


EXACT = {diff.S_BAD, diff.S_MISMATCH, diff.S_WIDX, diff.S_WREF, diff.S_WCAND, diff.S_CNAN, diff.S_CINF,
         diff.S_MAX_ERR, diff.S_CABSMAX}


def _same(a: float, b: float, slot: int) -> bool:
    """Fused terms are float32 elementwise with float64 sums: counts, the worst element and
    maxima of exact values agree exactly, the rest to 1e-6 relative."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if slot in EXACT:
        return a == b
    if slot == diff.S_RESID:  # a difference of nearly equal sums: equal up to their rounding
        return abs(a - b) <= 1e-9
    return a == b or abs(a - b) <= 1e-6 * max(abs(a), abs(b))


def check_case(name: str, make, device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ref, cand, *tol = make()
    tol = tol[0] if tol else TOL
    ref, cand = ref.to(device), cand.to(device)
    monkeypatch.setenv("PARITY_FUSED_STATS", "0")
    eager = diff.diff_vector(ref, cand, tol).tolist()
    eager_t = diff.tensor_vector(cand).tolist()
    monkeypatch.setenv("PARITY_FUSED_STATS", "1")
    assert fused.enabled(cand), name
    got = diff.diff_vector(ref, cand, tol).tolist()
    got_t = diff.tensor_vector(cand).tolist()
    if name == "tolerance-boundary":
        assert eager[diff.S_BAD] == 2, eager  # the definition itself: 1.875 and 0.5 fail
    for slot, (a, b) in enumerate(zip(got, eager)):
        assert _same(a, b, slot), f"{name}: slot {slot}: fused {a} vs eager {b}"
    for slot, (a, b) in enumerate(zip(got_t, eager_t)):
        assert _same(a, b, diff.S_CSUM + slot), f"{name}: tensor slot {slot}: fused {a} vs eager {b}"
    if device != "cpu":  # the CPU's eager numbers too
        cpu = diff.diff_vector(ref.cpu(), cand.cpu(), tol).tolist()
        for slot, (a, b) in enumerate(zip(got, cpu)):
            assert _same(a, b, slot), f"{name}: slot {slot}: {device} {a} vs cpu {b}"

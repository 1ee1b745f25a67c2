"""Diff statistics against direct numpy computations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from parity.compare import diff
from parity.compare.diff import compare, tensor_stats
from parity.compare.tolerances import Tolerance

TOL = Tolerance(atol=1e-3, rtol=1e-2)


def np_stats(r: np.ndarray, c: np.ndarray, tol: Tolerance) -> dict[str, float]:
    r = r.astype(np.float64)
    c = c.astype(np.float64)
    d = np.abs(r - c)
    return {
        "max_abs_err": d.max(),
        "mean_abs_err": d.mean(),
        "max_rel_err": (d / (np.abs(r) + diff.REL_EPS)).max(),
        "cosine": float(np.dot(r.ravel(), c.ravel()) / (np.linalg.norm(r) * np.linalg.norm(c))),
        "snr_db": 10 * np.log10((r**2).sum() / (d**2).sum()),
        "nrmse": np.sqrt((d**2).sum() / (r**2).sum()),
        "n_bad": int((d > tol.atol + tol.rtol * np.abs(r)).sum()),
        "worst": np.unravel_index(np.argmax(d), r.shape),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_compare_matches_numpy(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(7, 33, generator=g)
    cand = (ref + 0.01 * torch.randn(7, 33, generator=g)).to(dtype)
    got = compare(ref, cand, TOL)
    want = np_stats(ref.numpy(), cand.float().numpy(), TOL)
    for key in ("max_abs_err", "mean_abs_err", "max_rel_err", "cosine", "snr_db", "nrmse"):
        assert getattr(got, key) == pytest.approx(want[key], rel=1e-9), key
    assert got.n_bad == want["n_bad"]
    assert tuple(got.worst_index) == tuple(int(i) for i in want["worst"])
    assert got.worst_ref == pytest.approx(float(ref[tuple(got.worst_index)]))
    assert got.passed == (want["n_bad"] == 0)


def test_tensor_stats_matches_numpy() -> None:
    x = torch.randn(5, 6, 7, generator=torch.Generator().manual_seed(1)).to(torch.float16)
    s = tensor_stats(x)
    a = x.double().numpy()
    assert s.mean == pytest.approx(a.mean(), rel=1e-12)
    assert s.sum == pytest.approx(a.sum(), rel=1e-12)
    assert s.abs_max == pytest.approx(np.abs(a).max())
    assert s.shape == [5, 6, 7] and s.dtype == "float16" and s.nan == 0 and s.inf == 0


def test_chunked_equals_unchunked(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(2)
    ref = torch.randn(50, 21, generator=g)
    cand = ref + 1e-3 * torch.randn(50, 21, generator=g)
    cand[37, 5] += 1.0  # the worst element sits in a late chunk
    whole = compare(ref, cand, TOL)
    monkeypatch.setattr(diff, "CHUNK", 64)
    parts = compare(ref, cand, TOL)
    assert parts.worst_index == [37, 5] == whole.worst_index
    for key in ("max_abs_err", "mean_abs_err", "max_rel_err", "cosine", "snr_db", "n_bad"):
        assert getattr(parts, key) == pytest.approx(getattr(whole, key), rel=1e-12), key
    st = tensor_stats(cand)
    assert st.sum == pytest.approx(float(cand.double().sum()), rel=1e-12)


def test_identical_tensors() -> None:
    x = torch.randn(4, 8)
    d = compare(x, x.clone(), Tolerance(0.0, 0.0))
    assert d.max_abs_err == 0.0 and d.mean_abs_err == 0.0 and d.n_bad == 0
    assert d.cosine == pytest.approx(1.0) and d.snr_db == math.inf and d.nrmse == 0.0 and d.passed


def test_all_zero_tensors() -> None:
    z = torch.zeros(3, 4)
    d = compare(z, z.clone(), TOL)
    assert d.cosine == 1.0 and d.max_abs_err == 0.0 and d.passed and d.nrmse == 0.0
    d2 = compare(z, torch.full((3, 4), 0.5), TOL)
    assert d2.cosine == 0.0 and d2.max_abs_err == 0.5 and d2.snr_db == -math.inf and d2.nrmse == math.inf
    assert not d2.passed and d2.n_bad == 12
    s = tensor_stats(z)
    assert s.mean == 0.0 and s.sum == 0.0 and s.abs_max == 0.0


def test_nan_and_inf_are_counted_not_crashing() -> None:
    ref = torch.tensor([[1.0, 2.0, float("nan"), 4.0], [float("inf"), 1.0, 1.0, 1.0]])
    cand = torch.tensor([[1.0, float("inf"), float("nan"), 4.0], [float("inf"), float("nan"), 1.0, 1.0]])
    d = compare(ref, cand, TOL)
    # NaN vs NaN and +inf vs +inf are "the same"; 2.0 vs inf and 1.0 vs nan are mismatches.
    assert d.n_nonfinite_mismatch == 2 and not d.passed
    assert d.max_abs_err == math.inf and d.mean_abs_err == math.inf
    assert d.worst_index == [0, 1]
    finite = np.array([1.0, 4.0, 1.0, 1.0])
    assert d.cosine == pytest.approx(float(finite @ finite / (finite @ finite)))
    s = tensor_stats(cand)
    assert s.nan == 2 and s.inf == 2 and math.isinf(s.abs_max)
    assert math.isnan(s.mean)


def test_fp16_overflow_in_candidate() -> None:
    ref = torch.tensor([70000.0, 1.0])
    cand = ref.to(torch.float16)  # 70000 -> inf in float16
    d = compare(ref, cand, TOL)
    assert d.n_nonfinite_mismatch == 1 and d.worst_index == [0]
    assert diff.fp16_headroom(70000.0) > 1.0


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        compare(torch.zeros(2, 3), torch.zeros(3, 2), TOL)


def test_tolerance_elementwise_rule() -> None:
    ref = torch.tensor([1.0, 100.0])
    cand = torch.tensor([1.0 + 3e-3, 100.5])  # within 1e-3 + 1e-2*|ref|; not within 1e-3 + 1e-3*|ref|
    d = compare(ref, cand, TOL)
    assert d.n_bad == 0
    d = compare(ref, cand, Tolerance(1e-3, 1e-3))
    assert d.n_bad == 2


def test_host_reference_in_row_blocks_equals_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """A large host-resident reference compared block by block (diff_vector_from_host) gives
    the statistics of the whole comparison: sums to rounding, extremes, the worst element's
    index, the first-token and later-token errors and the per-row fit exactly."""
    g = torch.Generator().manual_seed(3)
    ref = torch.randn(37, 5, 6, generator=g, dtype=torch.float32) * 4
    cand = (ref + 0.01 * torch.randn(ref.shape, generator=g)).to(torch.float16)
    cand[29, 2, 4] = 90.0  # the worst element, in the fourth block
    tol = Tolerance(1e-3, 1e-3)
    whole = diff.diff_vector(ref, cand, tol)
    monkeypatch.setattr(diff, "HOST_BLOCK_BYTES", 8 * 30 * 4)  # 8 rows of 30 float32 a block: 5 blocks
    blocks = []
    real = diff.diff_vector
    monkeypatch.setattr(diff, "diff_vector", lambda r, c, *a: blocks.append(r.shape[0]) or real(r, c, *a))
    blocked = diff.diff_vector_from_host(ref, cand, tol)
    assert blocks == [8, 8, 8, 8, 5]
    exact = [diff.S_MAX_ERR, diff.S_WIDX, diff.S_WREF, diff.S_WCAND, diff.S_REL_MAX, diff.S_BAD, diff.S_TOK0, diff.S_LATER,
             diff.S_CABSMAX, diff.S_AMIN, diff.S_AMAX]
    assert blocked[exact].tolist() == whole[exact].tolist()
    assert torch.allclose(blocked, whole, rtol=1e-12, atol=1e-12)
    assert diff.diff_from(blocked.tolist(), list(ref.shape)).worst_index == [29, 2, 4]

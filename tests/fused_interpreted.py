"""Fused (Triton) statistics through Triton's interpreter, on CPU tensors.

Not collected by a plain `pytest` run (the name does not start with test_): TRITON_INTERPRET
must be set before Triton is imported, so test_fused.py runs this file in a subprocess with
it set. The same cases run compiled on a GPU in test_gpu.py."""
from __future__ import annotations

import os

import pytest
import torch

from fused_cases import CASES, TOL, check_case
from parity import diff, fused
from parity.capture import Capture, Comparator, Recorder
from parity.tolerances import ToleranceTable

pytest.importorskip("triton", reason="Triton is not installed")
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run by test_fused.py with TRITON_INTERPRET=1", allow_module_level=True)


@pytest.mark.parametrize("name", list(CASES))
def test_fused_matches_eager(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    check_case(name, CASES[name], "cpu", monkeypatch)


def test_batch_of_probes_across_arena_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many probes, records spread over several arena blocks, eager and fused items mixed:
    each probe gets its own numbers back, in one resolve."""
    monkeypatch.setattr(fused, "ARENA_RECORDS", 16)
    g = torch.Generator().manual_seed(11)
    pairs = {f"p{i}": (torch.randn(3 + i, 50, generator=g),) for i in range(12)}
    pairs = {k: (r, (r * (1 + 0.01 * i)).half()) for i, (k, (r,)) in enumerate(pairs.items())}
    pairs["empty"] = (torch.zeros(0, 4), torch.zeros(0, 4).half())  # eager path inside the batch
    ref_cap = Capture("reference")
    rec = Recorder(ref_cap, keep=True)
    for k, (r, _) in pairs.items():
        rec(k, r)
    comp = Comparator(ref_cap, Capture("candidate"), ToleranceTable(TOL))
    for k, (_, c) in pairs.items():
        comp(k, c)
    got = comp.diffs
    monkeypatch.setenv("PARITY_FUSED_STATS", "0")
    for k, (r, c) in pairs.items():
        want = diff.compare(r, c, TOL)
        assert got[k].max_abs_err == pytest.approx(want.max_abs_err, rel=1e-12), k
        assert got[k].worst_index == want.worst_index and got[k].n_bad == want.n_bad, k
        assert ref_cap.records[k].stats.sum == pytest.approx(diff.tensor_stats(r).sum, rel=1e-12, abs=1e-12), k
        assert comp.capture.records[k].stats.abs_max == diff.tensor_stats(c).abs_max, k

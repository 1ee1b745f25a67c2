"""GPU tests: run through the device machine (`make test-gpu` on a CUDA box)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import read_report
from parity.compare import fused

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("model", ["qwen", "qwen2", "llama"])
def test_cuda_fp16_run(model: str, tmp_path: Path, run_cli) -> None:
    code, out, _ = run_cli("run", "--model", model, "--device", "cuda", "-q", "--out", str(tmp_path))
    rep = read_report(tmp_path)
    assert code == 0, rep["summary"]["message"]
    assert rep["run"]["candidate"]["device"].startswith("cuda") and rep["run"]["reference"]["device"].startswith("cuda")


def test_cuda_fp32_is_close(tmp_path: Path, run_cli) -> None:
    code, _, _ = run_cli("run", "--device", "cuda", "--dtype", "fp32", "-q", "--out", str(tmp_path))
    assert code == 0


def test_cuda_sdpa_bf16(tmp_path: Path, run_cli) -> None:
    code, _, _ = run_cli("run", "--model", "llama", "--device", "cuda", "--dtype", "bf16", "--attn", "sdpa", "-q", "--out", str(tmp_path))
    assert code == 0


def test_fused_statistics_equal_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Triton kernels (compiled for this GPU) against the eager definition and the CPU."""
    from fused_cases import CASES, check_case

    assert fused.enabled(torch.empty(1, device="cuda")), "Triton should be usable on a CUDA machine"
    for name, make in CASES.items():
        check_case(name, make, "cuda", monkeypatch)


def test_fused_run_equals_eager_run(tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole CUDA run reports the same numbers with fused and with eager statistics."""
    reports = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("PARITY_FUSED_STATS", flag)
        out = tmp_path / flag
        code, _, _ = run_cli("run", "--model", "llama", "--device", "cuda", "--tokens", "40", "-q", "--out", str(out))
        assert code == 0
        reports[flag] = {p["name"]: p for p in read_report(out)["probes"]}
    assert reports["1"].keys() == reports["0"].keys()
    for name, fast in reports["1"].items():
        slow = reports["0"][name]
        for key in ("max_abs_err", "mean_abs_err", "max_rel_err", "cosine", "nrmse", "n_bad", "worst_index",
                    "ref_mean", "cand_mean", "cand_abs_max", "nan", "inf", "isolated_max_abs_err"):
            if fast[key] is None or isinstance(fast[key], list):
                assert fast[key] == slow[key], (name, key)
            else:
                assert fast[key] == pytest.approx(slow[key], rel=1e-6, abs=1e-12), (name, key)


def test_queued_statistics_survive_freed_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Queued launches read tensors the caller has already dropped, while new tensors are
    allocated and written, as in a forward: the arena keeps what it reads until its launch,
    so every probe gets its own numbers."""
    from parity.compare import diff
    from parity.compare.tolerances import Tolerance

    monkeypatch.setattr(fused, "HOLD_BYTES", 3 << 20)
    g = torch.Generator(device="cuda").manual_seed(0)
    tol = Tolerance(1e-3, 1e-3)
    batch, want, got = diff.Batch(), {}, {}
    with fused.deferred():
        for i in range(40):
            r = torch.randn(256, 1024, device="cuda", generator=g)
            c = (r + 1e-3 * i * torch.randn(r.shape, device="cuda", generator=g)).half()
            want[i] = diff.compare(r.cpu(), c.cpu(), tol)  # CPU: the eager definition
            got[i] = batch.add_diff(r, c, tol, lambda v: diff.diff_from(v, [256, 1024]))
            del r, c
            torch.randn(256, 1024, device="cuda", generator=g).mul_(7.0)  # reuses freed memory if it can
    for i in want:
        assert got[i].get().n_bad == want[i].n_bad, i
        assert got[i].get().max_abs_err == pytest.approx(want[i].max_abs_err, rel=1e-6), i

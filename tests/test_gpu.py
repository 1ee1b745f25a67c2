"""GPU tests: run through the device machine (`make test-gpu` on a CUDA box)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import read_report

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


def test_compiled_statistics_equal_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    from parity import diff
    from parity.tolerances import Tolerance

    g = torch.Generator(device="cuda").manual_seed(0)
    ref = torch.randn(300, 4096, device="cuda", generator=g)
    cand = (ref + 1e-3 * torch.randn(300, 4096, device="cuda", generator=g)).half()
    cand[5, 7] = float("nan")
    cand[250, 4000] = float("inf")
    tol = Tolerance(1e-2, 1e-2)
    monkeypatch.setattr(diff, "CHUNK", 1 << 20)  # several row chunks, each big enough to compile
    monkeypatch.setattr(diff, "COMPILE_MIN_NUMEL", 1 << 10)
    monkeypatch.setenv("PARITY_COMPILE_STATS", "1")
    compiled = diff.diff_vector(ref, cand, tol).cpu()
    monkeypatch.setenv("PARITY_COMPILE_STATS", "0")
    eager = diff.diff_vector(ref, cand, tol).cpu()
    assert "diff" not in diff._BROKEN
    assert torch.allclose(compiled, eager, rtol=1e-9, equal_nan=True)
    cpu = diff.diff_vector(ref.cpu(), cand.cpu(), tol)
    assert torch.allclose(compiled, cpu, rtol=1e-9, equal_nan=True)

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

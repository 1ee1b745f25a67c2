"""Fused (Triton) statistics on this CPU machine: the kernels' logic through Triton's
interpreter (tests/fused_interpreted.py, in a subprocess), and the launch geometry. The same
kernels run compiled on a GPU in test_gpu.py."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from parity.compare import fused

HERE = Path(__file__).parent


@pytest.mark.slow  # ~80 s of Triton's interpreter on 2 cores: make test-all
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine test_gpu.py runs the compiled kernels")
def test_kernels_match_eager_under_the_interpreter() -> None:
    pytest.importorskip("triton", reason="Triton is not installed (it comes with CUDA builds of torch; `pip install triton` here)")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    env.pop("PARITY_FUSED_STATS", None)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE / "fused_interpreted.py")],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout, r.stdout[-2000:]


def test_tiles_cover_every_column() -> None:
    for rows, length, block in [(1, 5000, 1024), (2, 151936, 1024), (512, 4096, 1024), (3, 100, 256), (1, 1, 256)]:
        for programs in (fused.PROGRAMS, fused.QUEUED_PROGRAMS):
            tiles, width = fused._tiles(rows, length, block, programs)
            assert width % block == 0 and (tiles - 1) * width < length <= tiles * width
            assert rows * tiles <= max(rows, programs) + rows


def test_off_switch_and_cpu_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not fused.enabled(torch.zeros(2))  # CPU tensors: the eager path
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("PARITY_FUSED_STATS", "0")
    assert not fused.enabled(torch.zeros(2))
    monkeypatch.setenv("PARITY_FUSED_STATS", "1")
    assert not fused.enabled(torch.zeros(2, dtype=torch.float64))  # float64 keeps its precision (eager)

"""The benchmark scripts themselves run (tiny shapes; the figures are not checked here)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def test_cpu_bench_smoke() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "benchmarks/cpu.py", "--smoke"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True)
    assert "cpu_default_run_seconds" in out.stdout and "cpu_help_seconds" in out.stdout


def test_results_file_is_complete() -> None:
    entries = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    names = {e["name"] for e in entries}
    for need in ("gpu_probe_overhead_ratio", "gpu_run_512_seconds", "gpu_peak_mem_over_weights_gib_4096",
                 "cpu_default_run_seconds", "polygraphy_time_ratio", "polygraphy_rss_ratio"):
        assert need in names, need
    for e in entries:
        assert {"name", "value", "unit", "target", "machine", "date"} <= set(e), e["name"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_bench_smoke(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OUT=str(tmp_path))
    subprocess.run([sys.executable, "benchmarks/gpu.py", "--shape", "tiny", "--models", "llama", "--tokens", "16", "64"],
                   cwd=ROOT, env=env, check=True, timeout=600)
    names = {e["name"] for e in json.loads((tmp_path / "gpu_results.json").read_text())}
    assert {"gpu_run_16_seconds_llama", "gpu_probe_overhead_ratio_llama"} <= names

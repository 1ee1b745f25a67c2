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


def test_host_reference_compared_in_blocks_on_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reference kept in pinned host memory and larger than a block reaches the GPU block by
    block through the Comparator, with the numbers of a whole comparison on the GPU."""
    from parity.capture.sinks import Capture, Comparator, ProbeRecord
    from parity.compare import diff
    from parity.compare.tolerances import Tolerance, ToleranceTable

    g = torch.Generator(device="cuda").manual_seed(1)
    ref_gpu = torch.randn(300, 2000, device="cuda", generator=g)
    cand = (ref_gpu + 1e-3 * torch.randn(ref_gpu.shape, device="cuda", generator=g)).half()
    cand[211, 17] = 50.0
    tols = ToleranceTable(Tolerance(1e-2, 1e-2))
    whole = diff.compare(ref_gpu, cand, Tolerance(1e-2, 1e-2))
    host = torch.empty(ref_gpu.shape, dtype=torch.float32, pin_memory=True)
    host.copy_(ref_gpu)
    cap = Capture("reference")
    cap.records["logits"] = ProbeRecord("logits", None, host)
    monkeypatch.setattr(diff, "HOST_BLOCK_BYTES", 64 * 2000 * 4)  # 64 rows a block: 5 blocks
    from parity.capture import sinks

    monkeypatch.setattr(sinks, "HOST_BLOCK_BYTES", 64 * 2000 * 4)
    blocks = []
    real = diff.diff_vector
    monkeypatch.setattr(diff, "diff_vector", lambda r, c, *a: blocks.append((r.shape[0], r.device.type)) or real(r, c, *a))
    comp = Comparator(cap, Capture("c"), tols)
    comp("logits", cand)
    got = comp.diffs["logits"]
    assert blocks == [(64, "cuda")] * 4 + [(44, "cuda")]
    assert got.worst_index == [211, 17] == whole.worst_index and got.n_bad == whole.n_bad
    assert got.max_abs_err == whole.max_abs_err and got.cosine == pytest.approx(whole.cosine, rel=1e-12)


def test_reference_probes_on_host_or_gpu_give_the_same_numbers(tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no GPU budget every reference probe goes to pinned host memory (the logits in
    blocks of rows, see diff_vector_from_host); the run's numbers are those of a run that
    keeps them all on the GPU."""
    from parity.compare import diff
    from parity.capture import sinks

    monkeypatch.setattr(diff, "HOST_BLOCK_BYTES", 1 << 20)
    monkeypatch.setattr(sinks, "HOST_BLOCK_BYTES", 1 << 20)  # the logits, 64 x 32000 float32, in 9 blocks
    reports = {}
    for keep in ("0", "100"):
        monkeypatch.setenv("PARITY_GPU_KEEP_GIB", keep)
        out = tmp_path / keep
        code, _, _ = run_cli("run", "--model", "llama", "--device", "cuda", "--tokens", "64", "-q", "--out", str(out))
        assert code == 0
        reports[keep] = {p["name"]: (p["max_abs_err"], p["worst_index"], p["n_bad"]) for p in read_report(out)["probes"]}
    assert reports["0"] == reports["100"]

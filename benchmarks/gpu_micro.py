"""CPU cost per call of the pieces of a hooked, compared forward (run on a CUDA machine).

The probe-overhead figure on a launch-bound forward is decided by host time per probe; this
prints microseconds per call of: a Triton launch of the statistics kernel (Triton's launcher
and a direct launch of the compiled kernel), a torch kernel launch, a forward hook on a
module, and the Comparator's own Python. Usage: python benchmarks/gpu_micro.py
"""
from __future__ import annotations

import time

import torch
from torch import nn


def per_call_us(fn, n: int = 2000) -> float:
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    dt = time.perf_counter() - t0
    torch.cuda.synchronize()
    return dt / n * 1e6


def graph_us(fn, n: int = 20, replays: int = 5) -> float:
    """GPU microseconds per ``fn()``: n calls captured in a CUDA graph and replayed, so host
    launch cost is out of the figure."""
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(n):
            fn()
    g.replay()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(replays):
        g.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / (n * replays) * 1e6


def main() -> None:
    from parity import diff, fused
    from parity.capture import Capture, Comparator, ProbeRecord
    from parity.tolerances import Tolerance, ToleranceTable

    dev = torch.device("cuda")
    ref = torch.randn(16, 64, device=dev)
    cand = ref.half()
    assert fused.enabled(cand)
    k = fused._kernels()
    arena = fused.Arena(dev)
    tol = diff._tol_tensor(0.01, 0.01, 1e-6, dev)
    buf = torch.empty(4096, fused.REC, dtype=torch.float64, device=dev)
    out: dict[str, float] = {}

    def jit_launch():
        k._rows_kernel[(16, 1)](ref, cand, buf, tol, 0, 64, 128, 64, 64, HAS_REF=True, BLOCK=128)

    out["triton_jit_launch"] = per_call_us(jit_launch)
    compiled = k._rows_kernel[(16, 1)](ref, cand, buf, tol, 0, 64, 128, 64, 64, HAS_REF=True, BLOCK=128)
    stream = torch.cuda.current_stream().cuda_stream

    def direct_launch():
        compiled.run(16, 1, 1, stream, compiled.function, compiled.packed_metadata, None, None, None,
                     ref, cand, buf, tol, 0, 64, 128, 64, 64, True, 128)

    try:
        buf.zero_()
        jit_launch()
        want = buf[:16].clone()
        buf.zero_()
        direct_launch()
        torch.cuda.synchronize()
        out["direct_equals_jit"] = float(torch.equal(buf[:16], want))
        out["triton_direct_launch"] = per_call_us(direct_launch)
    except Exception as exc:  # noqa: BLE001
        print("direct launch failed:", type(exc).__name__, exc)
    out["torch_add_launch"] = per_call_us(lambda: torch.add(ref, 1.0))
    out["torch_empty"] = per_call_us(lambda: torch.empty(16, 16, device=dev))
    out["arena_add"] = per_call_us(lambda: arena.add(cand, ref, tol, lambda v: None), 500)
    arena.blocks.clear()
    lin = nn.Identity()
    x = torch.randn(1, 16, 64, device=dev)
    out["module_call_nohook"] = per_call_us(lambda: lin(x))
    h = lin.register_forward_hook(lambda m, a, o: None)
    out["module_call_hook"] = per_call_us(lambda: lin(x))
    h.remove()
    ref_cap = Capture("r")
    ref_cap.records["blocks.0.attn_out"] = ProbeRecord("blocks.0.attn_out", None, ref)
    comp = Comparator(ref_cap, Capture("c"), ToleranceTable(Tolerance(0.01, 0.01)))

    def compare_one():
        comp("blocks.0.attn_out", cand)

    out["comparator_call"] = per_call_us(compare_one, 500)
    # GPU time of the statistics kernel on probe-sized pairs: 20 launches captured in a CUDA
    # graph and replayed, so host launch cost is out of the figure.
    for rows, cols, cdt in [(512, 4096, torch.float16), (512, 11008, torch.float16), (2048, 4096, torch.float16),
                            (512, 151936, torch.float16), (512, 4096, torch.float32)]:
        r = torch.randn(rows, cols, device=dev)
        c = (r + 1e-3 * torch.randn_like(r)).to(cdt)
        a = fused.Arena(dev)

        def stats(a=a, r=r, c=c):
            a.add(c, r, tol, lambda v: None)

        stats()  # compile
        a.blocks.clear()
        us = graph_us(stats)
        gbs = r.numel() * (4 + c.element_size()) / us / 1e3
        out[f"gpu_rows_kernel_{rows}x{cols}_{str(cdt)[6:]}"] = us
        print(f"rows kernel {rows}x{cols} {cdt}: {us:.1f} us GPU, {gbs:.0f} GB/s", flush=True)
        print(f"  torch r.sum(dim=1) same shape: {graph_us(lambda r=r: r.sum(dim=1)):.1f} us", flush=True)
    for key, v in out.items():
        print(f"{key:24s} {v:8.2f} us")


if __name__ == "__main__":
    main()

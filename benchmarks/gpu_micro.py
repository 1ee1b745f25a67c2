"""Per-call costs of the pieces of a hooked, compared forward (run on a CUDA machine).

The probe-overhead figure on a launch-bound forward is decided by host time per probe and
by the GPU time of the statistics. This prints: host microseconds per call of a forward
hook, a torch kernel launch, queueing one probe in an arena (deferred), launching a queue,
and the Comparator's own Python; and the GPU time per probe of the statistics kernel when
48 probes go in one launch, for several BLOCK / warps / stages / programs / chunk choices
(the kernel's tuning).
Usage: python benchmarks/gpu_micro.py [--tune]
"""
from __future__ import annotations

import argparse
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


def kernel_us(fn, name: str, reps: int = 5) -> float:
    """GPU microseconds per ``fn()`` spent in kernels whose name contains ``name`` (profiler)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    total = sum(getattr(e, "self_device_time_total", 0.0) for e in prof.key_averages() if name in e.key)
    return total / reps


def batched_gpu_us(fused, pairs, block: int, warps: int, stages: int, programs: int, chunk: int) -> float:
    """GPU microseconds per probe of the statistics kernel, all ``pairs`` in one launch."""
    fused.BLOCK, fused.WARPS, fused.STAGES, fused.QUEUED_PROGRAMS = block, warps, stages, programs
    fused.CHUNK = chunk
    fused._GEOMETRY.clear()  # tiles depend on BLOCK
    dev = pairs[0][0].device

    def run():
        a = fused.Arena(dev)
        with fused.deferred():
            for r, c in pairs:
                a.add(c, r, fused.tol_bits(0.01, 0.01, 1e-6), lambda *a: None)

    return kernel_us(run, "_rows_kernel") / len(pairs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tune", action="store_true", help="try BLOCK x warps choices of the statistics kernel")
    args = ap.parse_args()
    from parity.compare import diff
    from parity.compare import fused
    from parity.capture.sinks import Capture, Comparator, ProbeRecord
    from parity.compare.tolerances import Tolerance, ToleranceTable

    dev = torch.device("cuda")
    ref = torch.randn(16, 64, device=dev)
    cand = ref.half()
    assert fused.enabled(cand)
    tol = fused.tol_bits(0.01, 0.01, 1e-6)
    out: dict[str, float] = {}
    out["torch_add_launch"] = per_call_us(lambda: torch.add(ref, 1.0))
    arena = fused.Arena(dev)
    tol_dev = diff._tol_tensor(0.01, 0.01, 1e-6, dev)  # one probe launched on its own (a port's path)
    out["arena_launch_one"] = per_call_us(lambda: arena.launch(cand, ref, tol_dev, lambda *a: None), 500)
    arena.blocks.clear()
    held = 64

    def queue_and_launch():
        a = fused.Arena(dev)
        with fused.deferred():
            for _ in range(held):
                a.add(cand, ref, tol, lambda *a: None)

    out["arena_add_deferred_incl_launch"] = per_call_us(queue_and_launch, 200) / held
    lin = nn.Identity()
    x = torch.randn(1, 16, 64, device=dev)
    out["module_call_nohook"] = per_call_us(lambda: lin(x))
    h = lin.register_forward_hook(lambda m, a, k, o: None, with_kwargs=True)
    out["module_call_hook"] = per_call_us(lambda: lin(x))
    h.remove()
    ref_cap = Capture("r")
    ref_cap.records["blocks.0.attn_out"] = ProbeRecord("blocks.0.attn_out", None, ref)

    def compare_many():
        comp = Comparator(ref_cap, Capture("c"), ToleranceTable(Tolerance(0.01, 0.01)))
        with fused.deferred():
            for _ in range(held):
                comp("blocks.0.attn_out", cand)

    out["comparator_call_deferred"] = per_call_us(compare_many, 200) / held
    for key, v in out.items():
        print(f"{key:32s} {v:8.2f} us (host)", flush=True)
    shapes = ([(512, 4096, torch.float16), (512, 11008, torch.float16), (512, 151936, torch.float16)] if args.tune else
              [(512, 4096, torch.float16), (512, 11008, torch.float16), (512, 4096, torch.float32),
               (16, 4096, torch.float16), (2048, 4096, torch.float16), (512, 151936, torch.float16)])
    choices = ([(b, w, 3, p, ch) for b, w in ((128, 1), (128, 2), (256, 2), (256, 4))
                for p in (64, 256) for ch in (1, 2, 4)] if args.tune
               else [(fused.BLOCK, fused.WARPS, fused.STAGES, fused.QUEUED_PROGRAMS, fused.CHUNK)])
    for rows, cols, cdt in shapes:
        n = 4 if cols > 100000 else 48
        pairs = []
        for _ in range(n):
            r = torch.randn(rows, cols, device=dev)
            pairs.append((r, (r + 1e-3 * torch.randn_like(r)).to(cdt)))
        for block, warps, stages, programs, chunk in choices:
            us = batched_gpu_us(fused, pairs, block, warps, stages, programs, chunk)
            gbs = rows * cols * (4 + pairs[0][1].element_size()) / us / 1e3
            print(f"rows kernel {rows}x{cols} {str(cdt)[6:]} BLOCK={block} warps={warps} stages={stages} "
                  f"programs={programs} chunk={chunk}: "
                  f"{us:.1f} us GPU per probe, {gbs:.0f} GB/s", flush=True)
        del pairs
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

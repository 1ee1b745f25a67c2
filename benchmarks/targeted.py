"""Cost of the targeted pass (issue 18) at 7B shape: seconds of the targeted pass (candidate
capture of the few probes around the first divergence + hypothesis fits) over one plain
forward of the same candidate. Goal: ratio <= 1 (at most one extra forward).

Usage (on the GPU machine): python benchmarks/targeted.py [--model llama] [--shape 7b]
    [--tokens 512] [--faults double-rope@16 silu-wrong-branch@16 norm-eps@16 qkv-split@16]
Prints one line per fault and writes $OUT/targeted_results.json (or ./targeted_results.json).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from parity.backends import port
from parity.options import RunOptions
from parity.run import compare_candidate, prepare_reference


def plain_forward_s(model: torch.nn.Module, ids: list[int], device: str, reps: int = 5) -> float:
    x = torch.tensor([ids], device=device)
    times = []
    for _ in range(reps + 1):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode():
            model(x)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def measure(model: str, shape: str, tokens: int, fault: str, dtype: str) -> dict:
    opts = RunOptions(model=model, shape=shape, candidate="port", dtype=dtype, device="cuda", tokens=tokens, faults=[fault])
    ref = prepare_reference(opts)
    held: dict = {}

    def create(ctx):  # noqa: ANN001, ANN202 - keep the backend to time its plain forward afterwards
        held["b"] = port.create(ctx)
        return held["b"]

    t0 = time.perf_counter()
    res = compare_candidate(ref, opts, create=create, release_reference=True)
    total = time.perf_counter() - t0
    diag = res.report.summary.get("diagnosis") or {}
    tg = diag.get("targeted") or {}
    fwd = plain_forward_s(held["b"].model, ref.ids, "cuda")
    timings = res.report.run["timings_s"]
    targeted_s = next((v for k, v in timings.items() if k.startswith("targeted pass")), None)
    row = {"model": model, "shape": shape, "tokens": tokens, "dtype": dtype, "fault": fault,
           "verdict": res.report.summary.get("message"), "named_cause": diag.get("named_cause"), "probe": tg.get("probe"), "mode": tg.get("mode"),
           "plain_forward_s": fwd, "targeted_s": targeted_s, "capture_s": tg.get("capture_s"),
           "hypotheses_s": tg.get("hypotheses_s"), "run_s": total,
           "ratio_targeted_over_forward": None if targeted_s is None else targeted_s / fwd,
           "gpu": torch.cuda.get_device_name()}
    held.clear()
    del ref, res
    torch.cuda.empty_cache()
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama")
    ap.add_argument("--shape", default="7b")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--faults", nargs="+", default=["double-rope@16", "silu-wrong-branch@16", "norm-eps@16", "qkv-split@16"])
    a = ap.parse_args()
    rows = []
    for f in a.faults:
        r = measure(a.model, a.shape, a.tokens, f, a.dtype)
        rows.append(r)
        if r["targeted_s"] is None:
            print(f"{a.model} {a.shape} T={a.tokens} {f}: no targeted pass (the run found no divergence to explain: "
                  f"{r['verdict']})", flush=True)
            continue
        print(f"{a.model} {a.shape} T={a.tokens} {f}: named {r['named_cause']} at {r['probe']} ({r['mode']}); "
              f"targeted {r['targeted_s']:.3f}s (capture {r['capture_s']}s, hypotheses {r['hypotheses_s']}s) / "
              f"plain forward {r['plain_forward_s']:.3f}s = ratio {r['ratio_targeted_over_forward']:.2f}", flush=True)
    out = Path(os.environ.get("OUT", ".")) / "targeted_results.json"
    out.write_text(json.dumps(rows, indent=1))
    print(f"max ratio {max(r['ratio_targeted_over_forward'] or 0 for r in rows):.2f} -> {out}")


if __name__ == "__main__":
    main()

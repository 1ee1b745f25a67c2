"""GPU benchmark (run on the H200 through the device tool): 7B-shaped seeded models.

Writes one JSON object per figure to $OUT/gpu_results.json (or ./gpu_results.json).
Figures: end-to-end `parity run` seconds, probe-capture overhead vs a hook-free forward,
peak GPU memory over weights. Usage: python benchmarks/gpu.py [--tokens 512 4096] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch


def timed_forward(model, ids, reps: int = 5) -> float:
    with torch.inference_mode():
        for _ in range(2):
            model(input_ids=ids, use_cache=False)
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            model(input_ids=ids, use_cache=False)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def overhead(model_name: str, shape: str, tokens: int) -> dict:
    """Candidate forward with every probe hooked and compared on device vs no hooks."""
    from parity.backends.pytorch import ModuleBackend, make_candidate
    from parity.capture import Capture, Comparator, Recorder
    from parity.probemap import find_map
    from parity.source import ModelSource

    src = ModelSource.resolve(model_name, shape=shape)
    pmap = find_map(src.preset.probe_map)
    names = pmap.names(src.num_blocks)
    ref_model = src.build("cuda")
    ids = torch.randint(0, 32000, (1, tokens), device="cuda")
    ref = ModuleBackend(ref_model, pmap, getattr(ref_model, "config", src.config), "reference", src.num_blocks)
    ref_cap = Capture("reference")
    with ref:
        ref.capture(ids, names, Recorder(ref_cap, keep=True, store_device="cuda"))
    cand = make_candidate(ref_model, pmap, src.config, src.num_blocks, dtype="fp16", device="cuda")
    del ref_model
    torch.cuda.empty_cache()
    plain = timed_forward(cand.model, ids)
    tols = src.preset.tolerance_table("fp16")
    with torch.inference_mode():
        times = []
        with cand:
            for i in range(4):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                cand.capture(ids, names, Comparator(ref_cap, Capture("c"), tols))
                torch.cuda.synchronize()
                if i:  # first is warm-up
                    times.append(time.perf_counter() - t0)
    hooked = statistics.median(times)
    return {"plain_s": plain, "hooked_s": hooked, "ratio": hooked / plain, "probes": len(names)}


def end_to_end(model_name: str, shape: str, tokens: int, out: Path) -> dict:
    from parity.options import RunOptions
    from parity.run import execute

    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    res = execute(RunOptions(model=model_name, shape=shape, tokens=tokens, device="cuda", dtype="fp16"))
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30
    return {"seconds": wall, "peak_gib": peak, "verdict": res.report.summary["verdict"],
            "message": res.report.summary["message"], "timings": res.report.run["timings_s"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen")
    ap.add_argument("--tokens", type=int, nargs="+", default=[512])
    ap.add_argument("--skip-overhead", action="store_true")
    args = ap.parse_args()
    out = Path(os.environ.get("OUT", "."))
    results = []
    meta = {"machine": torch.cuda.get_device_name(), "date": date.today().isoformat(), "python": platform.python_version(), "torch": torch.__version__}
    for t in args.tokens:
        r = end_to_end(args.model, "7b", t, out)
        print(f"[e2e] {args.model} 7b tokens={t}: {r}", flush=True)
        results.append({"name": f"gpu_run_{t}_seconds", "value": r["seconds"], "unit": "s", **meta, "detail": r})
        torch.cuda.empty_cache()
    if not args.skip_overhead:
        r = overhead(args.model, "7b", args.tokens[0])
        print(f"[overhead] {r}", flush=True)
        results.append({"name": "gpu_probe_overhead_ratio", "value": r["ratio"], "unit": "x", **meta, "detail": r})
    (out / f"gpu_results_{args.model}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

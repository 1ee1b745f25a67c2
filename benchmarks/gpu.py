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
    out: dict = {}
    for compiled in ("1", "0"):
        os.environ["PARITY_COMPILE_STATS"] = compiled
        times = []
        with torch.inference_mode(), cand:
            for i in range(5):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                comp = Comparator(ref_cap, Capture("c"), tols)
                cand.capture(ids, names, comp)
                _ = comp.diffs  # the one host transfer is part of the cost
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
        key = "compiled" if compiled == "1" else "eager"
        out[f"first_call_s_{key}"] = times[0]
        out[f"hooked_s_{key}"] = statistics.median(times[1:])
        if os.environ.get("PARITY_BENCH_PROFILE"):
            from torch.profiler import ProfilerActivity, profile

            with torch.inference_mode(), cand, profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                comp = Comparator(ref_cap, Capture("c"), tols)
                cand.capture(ids, names, comp)
                _ = comp.diffs
                torch.cuda.synchronize()
            print(f"== profile, compiled statistics={compiled}", flush=True)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18), flush=True)
    os.environ.pop("PARITY_COMPILE_STATS", None)
    hooked = out["hooked_s_eager"]  # the default path
    return {"plain_s": plain, "hooked_s": hooked, "ratio": hooked / plain, "probes": len(names),
            "ratio_compiled_stats": out["hooked_s_compiled"] / plain, **out}


def weights_gib(model_name: str, shape: str, dtype_bytes: int) -> float:
    """Parameter bytes of the model in GiB, counted on the meta device (no memory)."""
    from parity.source import ModelSource

    src = ModelSource.resolve(model_name, shape=shape)
    with torch.device("meta"):
        m = src.family.build(src.config_dict, "eager")
    return sum(p.numel() for p in m.parameters()) * dtype_bytes / 2**30


def end_to_end(model_name: str, shape: str, tokens: int, dtype: str = "fp16") -> dict:
    from parity.options import RunOptions
    from parity.run import execute

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    res = execute(RunOptions(model=model_name, shape=shape, tokens=tokens, device="cuda", dtype=dtype))
    wall = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    weights = weights_gib(model_name, shape, 4) + weights_gib(model_name, shape, 2)
    return {"seconds": wall, "peak_gib": peak, "weights_gib": weights, "over_weights_gib": peak - weights,
            "verdict": res.report.summary["verdict"], "message": res.report.summary["message"],
            "timings": res.report.run["timings_s"], "dtype": dtype, "tokens": tokens, "model": model_name}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["qwen", "llama"])
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--skip-4096", action="store_true")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--shape", default="7b", help="preset shape; 'tiny' = the embedded preset (smoke test)")
    ap.add_argument("--tokens", type=int, nargs=2, default=[512, 4096], metavar=("SHORT", "LONG"))
    args = ap.parse_args()
    out = Path(os.environ.get("OUT", "."))
    results: list[dict] = []
    meta = {"machine": f"{torch.cuda.get_device_name()} (torch {torch.__version__}, Python {platform.python_version()})",
            "date": date.today().isoformat()}

    def add(name: str, value: float, unit: str, detail: dict) -> None:
        results.append({"name": name, "value": round(value, 4), "unit": unit, **meta, "detail": detail})
        print(f"{name} = {value:.4g} {unit} | {detail}", flush=True)
        (out / "gpu_results.json").write_text(json.dumps(results, indent=2))

    shape = None if args.shape == "tiny" else args.shape
    short, long = args.tokens
    for model in args.models:
        sfx = "" if model == "qwen" else f"_{model}"
        for dtype in () if args.skip_e2e else ("fp16", "bf16"):
            r = end_to_end(model, shape, short, dtype)
            add(f"gpu_run_{short}_seconds{sfx}" + ("" if dtype == "fp16" else "_bf16"), r["seconds"], "s", r)
        if not args.skip_4096 and not args.skip_e2e:
            r = end_to_end(model, shape, long)
            add(f"gpu_peak_mem_over_weights_gib_{long}{sfx}", r["over_weights_gib"], "GiB", r)
        if not args.skip_overhead:
            r = overhead(model, shape, short)
            add(f"gpu_probe_overhead_ratio{sfx}", r["ratio"], "x", r)


if __name__ == "__main__":
    main()

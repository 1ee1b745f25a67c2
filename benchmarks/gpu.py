"""GPU benchmark (run on the H200 through the device tool): 7B-shaped seeded models.

Writes one JSON object per figure to $OUT/gpu_results.json (or ./gpu_results.json).
Figures: end-to-end `parity run` seconds (in this process, and in a fresh process: every
stage from the interpreter's start), probe-capture overhead vs a hook-free forward, peak GPU
memory over weights. Usage: python benchmarks/gpu.py [--tokens 512 4096] [--only-fresh]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch


def _median_time(fn, reps: int) -> tuple[float, float]:
    """(first call, median of the rest) wall seconds of ``fn()``, synchronized."""
    times = []
    for _ in range(reps + 1):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times[0], statistics.median(times[1:])


def _interleaved(fns: dict, reps: int) -> dict:
    """Median wall seconds of each function, calls alternating (after one warm-up round)."""
    times: dict = {k: [] for k in fns}
    for i in range(reps + 1):
        for k, fn in fns.items():
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            if i:
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def timed_forward(model, ids, reps: int = 7) -> float:
    def fwd():
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False)

    _median_time(fwd, 2)  # warm-up
    return _median_time(fwd, reps)[1]


def _kernel_ms(fn) -> float:
    """Sum of GPU kernel time of one ``fn()`` call (torch profiler), milliseconds."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    total = 0.0
    for e in prof.key_averages():
        total += getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0)
    return total / 1000.0


class _HookFree:
    """While active, ``model``'s probe hooks are set aside (nn.Module's fast path runs): a
    backend keeps its hooks installed while it is active, so a forward of its model in that
    time is not hook-free. Setting aside and back is four dict writes per hooked module (~0.1 ms for 300)."""

    def __init__(self, model) -> None:
        from collections import OrderedDict

        def others(hooks) -> OrderedDict:  # hooks that are not probes stay
            return OrderedDict((k, h) for k, h in hooks.items() if not getattr(h, "__parity_tap__", False))

        self.modules = [m for m in model.modules() if m._forward_hooks or m._forward_pre_hooks]
        self.bare = [(others(m._forward_hooks), others(m._forward_pre_hooks)) for m in self.modules]
        self.saved: list = []

    def __enter__(self) -> None:  # straight into __dict__: nn.Module.__setattr__ costs ~1 us a call
        self.saved = [(m._forward_hooks, m._forward_pre_hooks) for m in self.modules]
        for m, (post, pre) in zip(self.modules, self.bare):
            d = m.__dict__
            d["_forward_hooks"], d["_forward_pre_hooks"] = post, pre

    def __exit__(self, *exc) -> None:
        for m, (post, pre) in zip(self.modules, self.saved):
            d = m.__dict__
            d["_forward_hooks"], d["_forward_pre_hooks"] = post, pre


def _copy_bandwidth_gbps() -> float:
    """Device-to-device copy of 1 GiB: bytes read plus written per second (GB/s)."""
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    b.copy_(a)
    _, t = _median_time(lambda: b.copy_(a), 5)
    return 2 * a.numel() / t / 1e9


def overhead(model_name: str, shape: str, tokens: int, more_tokens: tuple[int, ...] = ()) -> dict:
    """Candidate forward with every probe hooked and compared on device vs no hooks.

    Also splits the cost: hooks alone (a sink that does nothing), the default fused
    statistics (batched launches), fused statistics with one launch per probe (as a port
    gets), the eager torch statistics (PARITY_FUSED_STATS=0), GPU kernel time of the
    plain and hooked forwards, and the same at 16 tokens, where the forward is bound by
    the CPU launching kernels (so the difference is the CPU cost of the probes)."""
    from parity.engines.torch.runner import ModuleBackend, make_candidate
    from parity.capture.sinks import Capture, Comparator, Recorder
    from parity.compare.diff import Batch
    from parity.capture.probemap import find_map
    from parity.loading.source import ModelSource
    from parity.compare.tolerances import Tolerance

    src = ModelSource.resolve(model_name, shape=shape)
    pmap = find_map(src.preset.probe_map)
    names = pmap.names(src.num_blocks)
    ref_model = src.build("cuda")
    ids_for = {n: torch.randint(0, 32000, (1, n), device="cuda") for n in (tokens, *more_tokens)}
    ids = ids_for[tokens]
    ref = ModuleBackend(ref_model, pmap, getattr(ref_model, "config", src.config), "reference", src.num_blocks)
    ref_caps = {n: Capture("reference") for n in ids_for}
    with ref:
        for n, x in ids_for.items():
            ref.capture(x, names, Recorder(ref_caps[n], keep=True, store_device="cuda"))
    ref_cap = ref_caps[tokens]
    cand = make_candidate(ref_model, pmap, src.config, src.num_blocks, dtype="fp16", device="cuda")
    del ref_model
    torch.cuda.empty_cache()
    tols = src.preset.tolerance_table("fp16")
    out: dict = {"probes": len(names), "tokens": tokens}

    def on_device(x, cap=ref_cap) -> Comparator:
        """Every probe captured and its statistics computed on the GPU (the timer synchronizes)."""
        comp = Comparator(cap, Capture("c"), tols)
        cand.capture(x, names, comp)
        comp.batch.finish()
        return comp

    def compared(x, cap=ref_cap) -> None:
        _ = on_device(x, cap).diffs  # and read back into Python results, as a run does

    free: list = []  # made once the hooks are installed (the first capture installs them)

    def plain(x) -> None:  # hook-free
        with free[0], torch.inference_mode():
            cand.model(input_ids=x, use_cache=False)

    def bare_hooks(x) -> None:  # the probes' hooks installed, sending nowhere (sink None)
        with torch.inference_mode():
            cand.model(input_ids=x, use_cache=False)

    def hooks_only(x) -> None:
        cand.capture(x, names, lambda n, t: None)

    def self_diff(x) -> None:  # fused statistics of each tensor against itself (no reference needed)
        batch, tol = Batch(), Tolerance(0.0, 0.0)
        cand.capture(x, names, lambda n, t: batch.add_diff(t, t, tol, len))
        batch.resolve()

    with cand:
        out["first_call_s"] = _median_time(lambda: compared(ids), 2)[0]
        free.append(_HookFree(cand.model))
        out["hooked_modules"] = len(free[0].modules)
        # The host of the device machine is noisy over a run: the main figures alternate
        # their calls, so that drift hits every one of them alike.
        med = _interleaved({"plain_s": lambda: plain(ids), "hooked_s": lambda: on_device(ids),
                            "with_readback_s": lambda: compared(ids), "hooks_only_s": lambda: hooks_only(ids), "bare_hooks_s": lambda: bare_hooks(ids)}, 25)
        out.update(med)
        out["deferred"] = cand.defer_stats
        cand.defer_stats = False  # one launch per probe, as for a port
        out["per_probe_launch_s"] = _median_time(lambda: compared(ids), 5)[1]
        cand.defer_stats = out["deferred"]
        os.environ["PARITY_FUSED_STATS"] = "0"
        out["eager_stats_s"] = _median_time(lambda: compared(ids), 3)[1]
        os.environ.pop("PARITY_FUSED_STATS")
        out["plain_kernel_ms"] = _kernel_ms(lambda: plain(ids))
        out["hooked_kernel_ms"] = _kernel_ms(lambda: compared(ids))
        small = ids[:, :16]
        with free[0]:
            out["plain_16_s"] = timed_forward(cand.model, small)
        out["hooks_only_16_s"] = _median_time(lambda: hooks_only(small), 5)[1]
        out["self_diff_16_s"] = _median_time(lambda: self_diff(small), 5)[1]
        for m in more_tokens:  # longer prompts: the forward is bound by the GPU, not the host
            x, cap = ids_for[m], ref_caps[m]
            with free[0]:
                plain_m = timed_forward(cand.model, x, 3)
            hooked_m = _median_time(lambda: compared(x, cap), 3)[1]
            out[f"plain_{m}_s"], out[f"hooked_{m}_s"], out[f"ratio_{m}"] = plain_m, hooked_m, hooked_m / plain_m
        # The floor the issue names: one read of each captured tensor, both sides, at the
        # device's copy bandwidth, on top of the hook-free forward.
        cand_bytes = 2  # per element: the candidate is fp16 (make_candidate above)
        nbytes = sum(r.tensor.numel() * (r.tensor.element_size() + cand_bytes)
                     for r in ref_cap.records.values() if r.tensor is not None)
        out["stats_bytes_per_forward"] = nbytes
        out["copy_bandwidth_gbps"] = _copy_bandwidth_gbps()
        out["one_read_ms"] = nbytes / out["copy_bandwidth_gbps"] / 1e6
        out["one_read_floor_ratio"] = (out["plain_s"] + out["one_read_ms"] / 1e3) / out["plain_s"]
    n = len(names)
    out["ratio"] = out["hooked_s"] / out["plain_s"]
    out["ratio_bare_hooks"] = out["bare_hooks_s"] / out["plain_s"]
    out["ratio_with_readback"] = out["with_readback_s"] / out["plain_s"]
    out["ratio_hooks_only"] = out["hooks_only_s"] / out["plain_s"]
    out["ratio_eager_stats"] = out["eager_stats_s"] / out["plain_s"]
    out["ratio_per_probe_launch"] = out["per_probe_launch_s"] / out["plain_s"]
    out["cpu_us_per_probe_hooks"] = 1e6 * (out["hooks_only_16_s"] - out["plain_16_s"]) / n
    out["cpu_us_per_probe_fused"] = 1e6 * (out["self_diff_16_s"] - out["plain_16_s"]) / n
    out["gpu_us_per_probe"] = 1e3 * (out["hooked_kernel_ms"] - out["plain_kernel_ms"]) / n
    if os.environ.get("PARITY_BENCH_PROFILE"):  # where the host time goes (cProfile inflates Python)
        import cProfile
        import gc
        import pstats

        from parity.compare import fused

        def split() -> tuple[float, float]:
            """(hooked forward + its launches, synchronized; reading the statistics back)"""
            comp = Comparator(ref_cap, Capture("c"), tols)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            cand.capture(ids, names, comp)
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            _ = comp.diffs
            return t1 - t0, time.perf_counter() - t1

        with cand:
            parts = sorted(split() for _ in range(7))
            out["split_capture_s"], out["split_resolve_s"] = parts[3]
            hold, fused.HOLD_BYTES = fused.HOLD_BYTES, 1 << 40
            out["one_flush_s"] = _median_time(lambda: compared(ids), 5)[1]
            fused.HOLD_BYTES = hold
            gc.disable()
            out["hooked_gc_off_s"] = _median_time(lambda: compared(ids), 5)[1]
            with free[0]:
                out["plain_gc_off_s"] = timed_forward(cand.model, ids)
            gc.enable()
            compared(ids)
            pr = cProfile.Profile()
            pr.enable()
            compared(ids)
            torch.cuda.synchronize()
            pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(45)
        from torch.profiler import ProfilerActivity, profile

        with cand:  # the CUDA runtime calls of a hooked forward (a synchronizing copy stalls the queue)
            compared(ids)
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                compared(ids)
                torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
    return out


def weights_gib(model_name: str, shape: str, dtype_bytes: int) -> float:
    """Parameter bytes of the model in GiB, counted on the meta device (no memory)."""
    from parity.loading.source import ModelSource

    src = ModelSource.resolve(model_name, shape=shape)
    with torch.device("meta"):
        m = src.family.build(src.config_dict, "eager")
    return sum(p.numel() for p in m.parameters()) * dtype_bytes / 2**30


def end_to_end(model_name: str, shape: str, tokens: int, dtype: str = "fp16", attn: str = "sdpa") -> dict:
    """One whole `parity run`. The candidate uses SDPA attention, so it is not the precision
    twin (the reference in its dtype, eager) and the twin's forwards are part of the time."""
    from parity.options import RunOptions
    from parity.run import execute

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    res = execute(RunOptions(model=model_name, shape=shape, tokens=tokens, device="cuda", dtype=dtype, attn=attn))
    wall = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    weights = weights_gib(model_name, shape, 4) + weights_gib(model_name, shape, 2)
    return {"seconds": wall, "peak_gib": peak, "weights_gib": weights, "over_weights_gib": peak - weights,
            "verdict": res.report.summary["verdict"], "message": res.report.summary["message"],
            "timings": res.report.run["timings_s"], "dtype": dtype, "attn": attn, "tokens": tokens, "model": model_name,
            "twin": (res.report.run.get("verdict") or {}).get("twin")}


def fresh_run(model_name: str, shape: str | None, tokens: int, dtype: str = "fp16", attn: str = "sdpa",
              extra: tuple[str, ...] = ()) -> dict:
    """One `parity run` in a new process, every stage included (interpreter start, imports, CUDA
    initialization, weights, reference, twin, candidate, isolated and targeted passes, report
    files), and the run's own stage times. Run twice: the first process may have to compile the
    installed packages' bytecode (a bare machine whose site-packages holds no .pyc files: several
    seconds), the second is what every later run costs; the figure is the second. The floor is a
    process that only imports parity, torch (and transformers, for its families) and initializes CUDA."""
    env = dict(os.environ)
    env.setdefault("PYTHONPYCACHEPREFIX", str(Path(tempfile.gettempdir()) / "parity-pycache"))
    runs = []
    for _ in range(2):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "parity", "run", "--model", model_name, "--tokens", str(tokens), "--attn", attn,
                   "--dtype", dtype, "-q", "-o", f"{tmp}/r", *extra] + (["--shape", shape] if shape else [])
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            wall = time.perf_counter() - t0
            rep = Path(f"{tmp}/r/report.json")
            report = json.loads(rep.read_text()) if rep.is_file() else {}
        timings = (report.get("run") or {}).get("timings_s", {})
        runs.append({"seconds": wall, "exit_code": proc.returncode, "stages_s": timings,
                     "outside_stages_s": wall - sum(timings.values()), "message": (report.get("summary") or {}).get("message"),
                     "stderr_tail": proc.stderr[-400:]})
    hf = "" if model_name == "qwen" else (  # Qwen v1 needs no transformers; a run imports it as the floor does
        "from parity.loading import families\nfamilies.HIDE_UNUSED = True\n"
        "with families.unused_packages_hidden(): from transformers import LlamaForCausalLM\n")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import torch, parity.cli.run\n{hf}torch.zeros(1, device='cuda'); "
                    "torch.cuda.synchronize()"], check=True, env=env)
    floor = time.perf_counter() - t0
    return {**runs[1], "first_process": runs[0], "import_and_cuda_init_s": floor, "command": " ".join(cmd[1:])}


def _triton_version() -> str:
    try:
        import triton
        return triton.__version__
    except Exception:  # noqa: BLE001
        return "absent"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["qwen", "llama"])
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--skip-4096", action="store_true")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--skip-fresh", action="store_true")
    ap.add_argument("--dtypes", nargs="*", default=["fp16", "bf16"], help="dtypes of the in-process runs at SHORT tokens")
    ap.add_argument("--only-fresh", action="store_true", help="only the fresh-process figures")
    ap.add_argument("--shape", default="7b", help="preset shape; 'tiny' = the embedded preset (smoke test)")
    ap.add_argument("--tokens", type=int, nargs=2, default=[512, 4096], metavar=("SHORT", "LONG"))
    ap.add_argument("--overhead-tokens", type=int, nargs="*", default=[2048],
                    help="also measure the probe overhead at these prompt lengths (detail only)")
    args = ap.parse_args()
    out = Path(os.environ.get("OUT", "."))
    results: list[dict] = []
    meta = {"machine": f"{torch.cuda.get_device_name()} (torch {torch.__version__}, Triton {_triton_version()}, Python {platform.python_version()})",
            "date": date.today().isoformat()}

    def add(name: str, value: float, unit: str, detail: dict) -> None:
        results.append({"name": name, "value": round(value, 4), "unit": unit, **meta, "detail": detail})
        print(f"{name} = {value:.4g} {unit} | {detail}", flush=True)
        (out / "gpu_results.json").write_text(json.dumps(results, indent=2))

    shape = None if args.shape == "tiny" else args.shape
    short, long = args.tokens
    for model in () if args.skip_fresh else args.models:  # first: this process holds no GPU memory yet
        r = fresh_run(model, shape, short)
        add(f"gpu_fresh_run_{short}_seconds" + ("" if model == "qwen" else f"_{model}"), r["seconds"], "s", r)
    for model in () if args.only_fresh else args.models:
        sfx = "" if model == "qwen" else f"_{model}"
        for dtype in () if args.skip_e2e else args.dtypes:
            r = end_to_end(model, shape, short, dtype)
            add(f"gpu_run_{short}_seconds{sfx}" + ("" if dtype == "fp16" else "_bf16"), r["seconds"], "s", r)
        if not args.skip_4096 and not args.skip_e2e:
            r = end_to_end(model, shape, long)
            add(f"gpu_peak_mem_over_weights_gib_{long}{sfx}", r["over_weights_gib"], "GiB", r)
        if not args.skip_overhead:
            r = overhead(model, shape, short, tuple(args.overhead_tokens))
            add(f"gpu_probe_overhead_ratio{sfx}", r["ratio"], "x", r)


if __name__ == "__main__":
    main()

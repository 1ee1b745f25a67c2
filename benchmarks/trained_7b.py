"""GPU acceptance of trained-model activations at 7B (`--shape 7b --activations trained`).

Per family, one reference (float32, every probe) and against it: honest float16/bfloat16
candidates (torch with SDPA attention; the built-in port where the family has one) must pass;
the built-in port faults (silu-wrong-branch@20, double-rope@5, norm-eps@10, qkv-split@3) must be
localized at their block and named; norm-no-upcast@10 (no float32 upcast in the RMSNorm) must be
localized at block 10 and named as an overflow. Also the planted structure's magnitudes.
Writes $OUT/trained_7b.json. Usage: python benchmarks/trained_7b.py [--models qwen llama qwen2]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from parity.options import RunOptions
from parity.run import compare_candidate, prepare_reference

HONEST = [("torch", "fp16", {"attn": "sdpa"}), ("torch", "bf16", {"attn": "sdpa"}), ("port", "fp16", {}), ("port", "bf16", {})]
FAULTS = [("silu-wrong-branch@20", 20), ("double-rope@5", 5), ("norm-eps@10", 10), ("qkv-split@3", 3),
          ("norm-no-upcast@10", 10)]


def structure(ref) -> dict:
    """Massive activations (token 0 vs the median), outlier channels of attn_in, at a few blocks."""
    out = {}
    n = ref.source.num_blocks
    for b in sorted({0, 1, 2, n // 2, n - 1}):
        x = ref.capture.tensor(f"blocks.{b}.resid_post").float().reshape(len(ref.ids), -1)
        a = ref.capture.tensor(f"blocks.{b}.attn_in").float().reshape(len(ref.ids), -1)
        top = x[0].abs().topk(2)
        med_ch = a[1:].abs().median(0).values.sort(descending=True).values
        out[f"blocks.{b}"] = {"token0_top_channels": top.indices.tolist(), "token0_top_values": x[0, top.indices].tolist(),
                              "resid_abs_max": float(x.abs().max()), "resid_abs_median": float(x.abs().median()),
                              "attn_in_channel_medians_top8": [round(v, 2) for v in med_ch[:8].tolist()]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["qwen", "llama", "qwen2"])
    ap.add_argument("--tokens", type=int, default=512)
    args = ap.parse_args()
    out = Path(os.environ.get("OUT", ".")) / "trained_7b.json"
    results: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "tokens": args.tokens, "runs": []}
    for model in args.models:
        t0 = time.perf_counter()
        ref = prepare_reference(RunOptions(model=model, shape="7b", activations="trained", tokens=args.tokens, device="cuda"))
        results.setdefault("reference_s", {})[model] = time.perf_counter() - t0
        results.setdefault("structure", {})[model] = structure(ref)
        ported = model in ("qwen", "llama")
        cases = [(c, d, kw, None, None) for c, d, kw in HONEST if ported or c != "port"]
        cases += [("port", "fp16", {}, f, b) for f, b in FAULTS] if ported else []
        for cand, dtype, kw, fault, block in cases:
            t0 = time.perf_counter()
            try:
                s = compare_candidate(ref, replace(ref.options, candidate=cand, dtype=dtype, faults=[fault] if fault else [],
                                                   **kw)).report.summary
            except Exception as exc:  # noqa: BLE001 - recorded, the next case runs
                s = {"verdict": "error", "message": f"{type(exc).__name__}: {exc}"}
            d = s.get("diagnosis") or {}
            ok = s["verdict"] == "pass" if fault is None else (
                s["verdict"] == "diverged" and d.get("block") == block
                and (d.get("cause") == "overflow" if fault.startswith("norm-no-upcast") else d.get("named_cause") is not None))
            rec = {"model": model, "candidate": cand, "dtype": dtype, "fault": fault, "expected_block": block, "ok": ok,
                   "verdict": s["verdict"], "block": d.get("block"), "component": d.get("component"), "cause": d.get("cause"),
                   "named_cause": d.get("named_cause"), "hint": d.get("hint"), "message": s.get("message"),
                   "seconds": round(time.perf_counter() - t0, 2)}
            results["runs"].append(rec)
            print(f"{'OK ' if ok else 'BAD'} {model} {cand} {dtype} {fault or 'honest'}: {s['verdict']} "
                  f"block={d.get('block')} cause={d.get('cause')} named={d.get('named_cause')} ({rec['seconds']} s)", flush=True)
            out.write_text(json.dumps(results, indent=2))
        del ref
        torch.cuda.empty_cache()
    results["all_ok"] = all(r["ok"] for r in results["runs"])
    out.write_text(json.dumps(results, indent=2))
    print("ALL OK" if results["all_ok"] else "SOME FAILED", flush=True)


if __name__ == "__main__":
    main()

"""Cost of the targeted pass at 7B shape: seconds of the targeted pass (candidate
capture of the few probes around the first divergence + hypothesis fits) over one plain
forward of the same candidate. Goal: ratio <= 1 (at most one extra forward).

Usage (on the GPU machine): python benchmarks/targeted.py [--model llama] [--shape 7b]
    [--tokens 512] [--faults double-rope@16 silu-wrong-branch@16 norm-eps@16 qkv-split@16]
Prints one line per fault and writes $OUT/targeted_results.json (or ./targeted_results.json).
--profile adds each row's breakdown (seconds, CUDA-synchronized): the reference capture, the
candidate capture, the evidence, each hypothesis, the naming. A fault listed twice shows the
cold (first in the process) and the warm cost; a process per fault gives each one's cold cost
(how benchmarks/h200/ was measured, after `python -m compileall parity` as a pip install does).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from parity.engines.port import runner as port
from parity.run import targeted
from parity.verdict import hypotheses, named
from parity.verdict.hypotheses.registry import HYPOTHESES, Hypothesis
from parity.options import RunOptions
from parity.run import compare_candidate, prepare_reference


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def plain_forward_s(model: torch.nn.Module, ids: list[int], device: str, reps: int = 10) -> float:
    x = torch.tensor([ids], device=device)
    times = []
    for _ in range(reps + 1):
        _sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            model(x)
        _sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class Profile:
    """Synchronized timers around the targeted pass's parts (installed for one measure())."""

    def __init__(self) -> None:
        self.parts: dict[str, float] = {}
        self.undo: list = []

    def timer(self, key: str, fn):  # noqa: ANN001, ANN201
        def timed(*a, **k):  # noqa: ANN002, ANN003, ANN202
            _sync()
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                _sync()
                self.parts[key] = round(self.parts.get(key, 0.0) + time.perf_counter() - t0, 5)
        return timed

    def __enter__(self) -> "Profile":
        from parity.verdict.hypotheses import load_builtin
        load_builtin()
        for mod, name in ((targeted, "_reference"), (targeted, "capture"), (targeted, "evidence"), (named, "apply")):
            orig = getattr(mod, name)
            setattr(mod, name, self.timer(name, orig))
            self.undo.append(lambda m=mod, n=name, o=orig: setattr(m, n, o))
        saved = dict(HYPOTHESES)
        for k, h in saved.items():
            HYPOTHESES[k] = Hypothesis(h.name, h.points, self.timer("hyp:" + k, h.fn))
        self.undo.append(lambda: HYPOTHESES.update(saved))
        ident = hypotheses.identity_residual
        hypotheses.identity_residual = self.timer("identity", ident)
        self.undo.append(lambda: setattr(hypotheses, "identity_residual", ident))
        return self

    def __exit__(self, *exc: object) -> None:
        for u in reversed(self.undo):
            u()


def measure(model: str, shape: str, tokens: int, fault: str, dtype: str, profile: bool = False) -> dict:
    opts = RunOptions(model=model, shape=shape, candidate="port", dtype=dtype, device=DEVICE, tokens=tokens, faults=[fault])
    ref = prepare_reference(opts)
    held: dict = {}

    def create(ctx):  # noqa: ANN001, ANN202 - keep the backend to time its plain forward afterwards
        held["b"] = port.create(ctx)
        return held["b"]

    prof = Profile() if profile else None
    t0 = time.perf_counter()
    if prof is not None:
        with prof:
            res = compare_candidate(ref, opts, create=create, release_reference=True)
    else:
        res = compare_candidate(ref, opts, create=create, release_reference=True)
    total = time.perf_counter() - t0
    diag = res.report.summary.get("diagnosis") or {}
    tg = diag.get("targeted") or {}
    fwd = plain_forward_s(held["b"].model, ref.ids, DEVICE)
    timings = res.report.run["timings_s"]
    targeted_s = next((v for k, v in timings.items() if k.startswith("targeted pass")), None)
    row = {"model": model, "shape": shape, "tokens": tokens, "dtype": dtype, "fault": fault,
           "verdict": res.report.summary.get("message"), "named_cause": diag.get("named_cause"), "probe": tg.get("probe"), "mode": tg.get("mode"),
           "plain_forward_s": fwd, "targeted_s": targeted_s, "capture_s": tg.get("capture_s"),
           "hypotheses_s": tg.get("hypotheses_s"), "run_s": total,
           "ratio_targeted_over_forward": None if targeted_s is None else targeted_s / fwd,
           "gpu": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"}
    if prof is not None:
        row["profile"] = dict(sorted(prof.parts.items(), key=lambda kv: -kv[1]))
    held.clear()
    del ref, res
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama")
    ap.add_argument("--shape", default="7b", help="7b, or \"none\" for the preset's own size")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--profile", action="store_true", help="time the targeted pass's parts (synchronized)")
    ap.add_argument("--faults", nargs="+", default=["double-rope@16", "silu-wrong-branch@16", "norm-eps@16", "qkv-split@16"])
    a = ap.parse_args()
    rows = []
    for f in a.faults:
        r = measure(a.model, None if a.shape == "none" else a.shape, a.tokens, f, a.dtype, a.profile)
        rows.append(r)
        if r["targeted_s"] is None:
            print(f"{a.model} {a.shape} T={a.tokens} {f}: no targeted pass (the run found no divergence to explain: "
                  f"{r['verdict']})", flush=True)
            continue
        print(f"{a.model} {a.shape} T={a.tokens} {f}: named {r['named_cause']} at {r['probe']} ({r['mode']}); "
              f"targeted {r['targeted_s']:.3f}s (capture {r['capture_s']}s, hypotheses {r['hypotheses_s']}s) / "
              f"plain forward {r['plain_forward_s']:.3f}s = ratio {r['ratio_targeted_over_forward']:.2f}", flush=True)
        if "profile" in r:
            print("   " + ", ".join(f"{k} {v * 1e3:.1f}ms" for k, v in r["profile"].items() if v >= 2e-4), flush=True)
    out = Path(os.environ.get("OUT", ".")) / "targeted_results.json"
    out.write_text(json.dumps(rows, indent=1))
    print(f"max ratio {max(r['ratio_targeted_over_forward'] or 0 for r in rows):.2f} -> {out}")


if __name__ == "__main__":
    main()

"""Streamed-reference figures on one GPU (run through the device tool).

1. ``parity run --model qwen2 --shape 14b --dtype fp16 --tokens 512`` on one GPU: the float32
   reference (62.5 GiB of weights by parity's estimate) and a float16 torch candidate (30 GB)
   do not fit together, so the reference streams by itself; wall seconds, verdict, the
   reference's peak GPU memory against its largest unit.
2. The LLaMA-2-70B-shaped reference alone (``--shape 70b``, 280 GB of float32 weights), streamed
   on one GPU over 512 tokens: seconds and peak GPU memory.
3. ``--which tp70`` (two GPUs): ``parity run --model llama --shape 70b --tp 2 --dtype fp16
   --tokens 512`` against the streamed float32 reference, clean and with ``--fault
   tp-kv-offset@1``: wall seconds, verdict, per-GPU peak memory, the rank named.

Writes $OUT/streamed_<which>.json (or ./streamed_<which>.json). Usage:
``PYTHONPATH=. python3 benchmarks/streamed.py [--which 14b|70b|both] [--timeout S]``
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(os.environ.get("OUT", "."))
SEVENTY = """
import json, sys, time, torch
from parity.options import RunOptions
from parity.run.reference import prepare_reference
t0 = time.perf_counter()
ref = prepare_reference(RunOptions(model="llama", shape="70b", device="cuda", tokens=512))
wall = time.perf_counter() - t0
print(json.dumps({"seconds": round(wall, 1), "timings_s": ref.timings, "streamed": ref.facts["streamed"],
                  "probes": len(ref.capture.records), "gpu": torch.cuda.get_device_name()}))
"""


def _run(cmd: list[str], timeout: float) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        rc, text = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, text = 124, f"timeout after {timeout} s: {exc.stdout or ''}"
    return rc, round(time.perf_counter() - t0, 1), text


def run_14b(timeout: float) -> dict:
    out = OUT / "q14"
    cmd = [sys.executable, "-m", "parity", "run", "--model", "qwen2", "--shape", "14b", "--dtype", "fp16",
           "--tokens", "512", "--device", "cuda", "-q", "--out", str(out)]
    rc, wall, text = _run(cmd, timeout)
    fig = {"figure": "qwen2 --shape 14b fp16, 512 tokens, one GPU", "rc": rc, "wall_s": wall, "tail": text[-1500:]}
    report = out / "report.json"
    if report.is_file():
        rep = json.loads(report.read_text())
        run = rep["run"]
        fig.update(verdict=rep["summary"]["verdict"], message=rep["summary"]["message"],
                   streamed=run["reference"].get("streamed"), timings_s=run["timings_s"], gpu=run["versions"]["gpu"])
    return fig


def run_70b(timeout: float) -> dict:
    rc, wall, text = _run([sys.executable, "-c", SEVENTY], timeout)
    fig = {"figure": "llama --shape 70b streamed float32 reference alone, 512 tokens, one GPU", "rc": rc, "wall_s": wall}
    last = text.strip().splitlines()[-1] if text.strip() else ""
    try:
        fig.update(json.loads(last))
    except json.JSONDecodeError:
        fig["tail"] = text[-1500:]
    return fig


def run_tp70(timeout: float) -> dict:
    figs = {}
    for label, extra in (("clean", []), ("fault", ["--fault", "tp-kv-offset@1", "--no-targeted"])):
        out = OUT / f"tp70_{label}"
        cmd = [sys.executable, "-m", "parity", "run", "--model", "llama", "--shape", "70b", "--tp", "2", "--dtype", "fp16",
               "--tokens", "512", "--device", "cuda", "-q", "--out", str(out), *extra]
        rc, wall, text = _run(["bash", "-c", 'nvidia-smi --query-gpu=index,memory.used --format=csv,noheader -lms 500 '
                               f'> {out}.mem & m=$!; "$@"; r=$?; kill $m; exit $r', "_", *cmd], timeout)
        fig = {"rc": rc, "wall_s": wall, "tail": text[-800:]}
        mem = Path(f"{out}.mem")
        if mem.is_file():  # per-GPU peak as nvidia-smi saw it (every process on the card)
            peaks: dict[str, float] = {}
            for line in mem.read_text().splitlines():
                idx, used = (x.strip() for x in line.split(","))
                peaks[idx] = max(peaks.get(idx, 0.0), float(used.split()[0]) / 1024)
            fig["peak_gib_by_gpu"] = {k: round(v, 2) for k, v in peaks.items()}
        report = out / "report.json"
        if report.is_file():
            rep = json.loads(report.read_text())
            fig.update(verdict=rep["summary"]["verdict"], message=rep["summary"]["message"],
                       ranks=rep["summary"].get("ranks"), streamed=rep["run"]["reference"].get("streamed"),
                       timings_s=rep["run"]["timings_s"])
        figs[label] = fig
    return {"figure": "llama --shape 70b, --tp 2 fp16 vs the streamed float32 reference, 512 tokens, two GPUs", **figs}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--which", choices=["14b", "70b", "both", "tp70"], default="both")
    ap.add_argument("--timeout", type=float, default=170)
    args = ap.parse_args()
    for which, fn in (("14b", run_14b), ("70b", run_70b), ("tp70", run_tp70)):
        if args.which == which or (args.which == "both" and which != "tp70"):
            fig = fn(args.timeout)
            (OUT / f"streamed_{which}.json").write_text(json.dumps(fig, indent=1))
            print(json.dumps(fig, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

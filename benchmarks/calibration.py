"""Calibrated verdicts, measured: clean candidates must pass, faulty ones must fail at the right
place. One reference per (model, input); every candidate of the list is compared against it
(the precision twin is measured once per dtype and shared).

    python benchmarks/calibration.py --model llama --checkpoint DIR --prompt-set long --out cal.jsonl
    python benchmarks/calibration.py --model qwen --shape 7b --tokens 512 --device cuda --out cal.jsonl
    python benchmarks/calibration.py --summary benchmarks/calibration.jsonl    # the markdown table

Per candidate, one JSON line: the verdict, the first divergence and the diagnosis' block and
component, the largest excess and the distribution of the two ratios it is made of (nrmse
and max abs error over the twin's, each floored), over every probe; and the wall time.
These lines are what benchmarks/README.md's "Calibrated verdicts" section summarizes.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from parity.options import RunOptions  # noqa: E402

PROMPTS = ROOT / "tests" / "data" / "prompts.toml"
# (label, candidate, dtype, extra options, faults, expected (block, component) or None for a clean run)
CLEAN = [
    ("port-fp32", "port", "fp32", {}, []),
    ("port-fp16", "port", "fp16", {}, []),
    ("port-bf16", "port", "bf16", {}, []),
    ("sdpa-fp16", "torch", "fp16", {"attn": "sdpa"}, []),
    ("sdpa-bf16", "torch", "bf16", {"attn": "sdpa"}, []),
]
FAULTS = ["double-rope", "silu-wrong-branch@{mid}", "qkv-split@{mid}", "norm-eps@{mid}", "rope-base"]


def expected(fault: str, family: str) -> tuple[int | None, set[str]]:
    """(block, acceptable components) where a fault must be localized."""
    name, _, at = fault.partition("@")
    block = int(at) if at else 0
    return {
        "double-rope": (block, {"attn", "rope"}),  # q_rot/k_rot probes are the "rope" component
        "silu-wrong-branch": (block, {"mlp"}),
        "qkv-split": (block, {"attn"}),
        "norm-eps": (block, {"norm", "attn", "mlp"}),
        "rope-base": (None, {"rope"}),
    }[name]


def ratios(report: Any) -> tuple[list[float], list[float]]:
    """Per probe (nrmse ratio, max-abs ratio) as parity.verdict.calibrate computes them."""
    v = report.run.get("verdict") or {}
    floor = v.get("floor")
    rn, ra = [], []
    if floor is None:
        return rn, ra
    for r in report.probes:
        if r.excess is None:
            continue
        bn = max(r.twin_nrmse or 0.0, floor)
        ba = max(r.twin_max_abs_err or 0.0, floor * abs(r.ref_abs_max or 0.0))
        rn.append(r.nrmse / bn if bn else 0.0)
        ra.append(r.max_abs_err / ba if ba else 0.0)
    return rn, ra


def spread(xs: list[float]) -> dict[str, float] | None:
    xs = sorted(x for x in xs if math.isfinite(x))
    if not xs:
        return None
    return {"median": statistics.median(xs), "p95": xs[int(0.95 * (len(xs) - 1))], "max": xs[-1]}


def summarize(label: str, opts: RunOptions, result: Any, seconds: float, fault: str | None, family: str) -> dict[str, Any]:
    rep = result.report
    s = rep.summary
    fd = s.get("first_divergence") or {}
    diag = s.get("diagnosis") or {}
    rn, ra = ratios(rep)
    out: dict[str, Any] = {
        "label": label, "candidate": opts.candidate, "dtype": opts.dtype, "attn": opts.attn, "fault": fault,
        "tokens": rep.run.get("tokens"), "verdict": s["verdict"], "probes": s["probes_compared"],
        "failed": s["probes_failed"], "first": fd.get("probe"), "classification": fd.get("classification"),
        "diag_block": diag.get("block"), "diag_component": diag.get("component"), "cause": diag.get("cause"),
        "largest_excess": (s.get("largest_excess") or {}).get("excess"),
        "largest_excess_probe": (s.get("largest_excess") or {}).get("probe"),
        "nrmse_ratio": spread(rn), "max_abs_ratio": spread(ra), "seconds": round(seconds, 2),
        "twin": (rep.run.get("verdict") or {}).get("twin"),
    }
    if fault:
        block, comps = expected(fault, family)
        out["localized"] = (out["verdict"] == "diverged" and diag.get("block") == block
                            and diag.get("component") in comps)
    else:
        out["ok"] = out["verdict"] == "pass"
    return out


def inputs(ns: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    if ns.prompt_set:
        texts = tomllib.loads(PROMPTS.read_text())
        return [(f"{k}{'+chat' if ns.chat else ''}", {"prompt": texts[k].strip()}) for k in ns.prompt_set]
    return [(f"{n} tokens", {"tokens": n}) for n in ns.tokens]


def excess_of(line: dict[str, Any]) -> float | None:
    """The largest excess of a line, from its ratio spreads (max over probes of
    max(nrmse ratio, max-abs ratio / slack) = max(max nrmse ratio, max max-abs ratio / slack))."""
    from parity.verdict.calibrate import MAX_ABS_SLACK

    n, a = line.get("nrmse_ratio"), line.get("max_abs_ratio")
    return None if not n or not a else max(n["max"], a["max"] / MAX_ABS_SLACK)


def summary(path: Path) -> str:
    """Markdown table of a results file: one row per candidate, worst excess over its inputs."""
    rows: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for text in path.read_text().splitlines():
        line = json.loads(text)
        if "error" in line:
            continue
        rows.setdefault((line.get("machine", "?"), f"{line['model']} {line['source']}", line["label"]), []).append(line)
    out = ["| machine | model | candidate | inputs | verdicts | largest excess | first divergence / diagnosis |",
           "|---|---|---|---|---|---|---|"]
    for (machine, model, label), lines in rows.items():
        worst = max((excess_of(x) or 0.0) for x in lines)
        verdicts = ", ".join(sorted({x["verdict"] for x in lines}))
        where = "; ".join(sorted({f"{x['first']} -> block {x['diag_block']} {x['diag_component']} ({x['cause']})"
                                  for x in lines if x.get("first")}))
        ok = all(x.get("localized", x.get("ok")) for x in lines)
        out.append(f"| {machine} | {model} | {label} | {', '.join(str(x['input']) for x in lines)} | {verdicts}"
                   f"{'' if ok else ' (UNEXPECTED)'} | x{worst:.3g} | {where or '-'} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--summary":
        print(summary(Path(sys.argv[2])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama")
    ap.add_argument("--checkpoint")
    ap.add_argument("--shape")
    ap.add_argument("--tokens", type=int, nargs="*", default=[])
    ap.add_argument("--prompt-set", nargs="*", choices=["short", "medium", "long"])
    ap.add_argument("--chat", action="store_true", help="wrap prompts in the model's chat format (parity run --chat)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--clean", nargs="*", default=None, help="labels of clean candidates to run (default: all)")
    ap.add_argument("--extra", nargs="*", default=[], help="extra clean candidates: onnxruntime-fp16, onnxruntime-fp32, compile-fp16")
    ap.add_argument("--faults", nargs="*", default=None, help="port faults in fp16 (default: the standard list; {mid} = middle block)")
    ap.add_argument("--fault-dtypes", nargs="*", default=["fp16"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--machine", default=None, help="machine label recorded in each line (default: the GPU name or 'cpu')")
    ns = ap.parse_args(argv)

    from parity.run import compare_candidate, prepare_reference

    extra = {"onnxruntime-fp16": ("onnxruntime", "fp16", {}), "onnxruntime-fp32": ("onnxruntime", "fp32", {}),
             "compile-fp16": ("torch", "fp16", {"compile": True})}
    clean = [c for c in CLEAN if ns.clean is None or c[0] in ns.clean]
    clean += [(k, *extra[k], []) for k in ns.extra]
    out = Path(ns.out)
    for in_label, given in inputs(ns):
        base = RunOptions(model=ns.model, checkpoint=ns.checkpoint, shape=ns.shape, device=ns.device, chat=ns.chat, **given)
        t0 = time.perf_counter()
        ref = prepare_reference(base)
        ref_s = time.perf_counter() - t0
        mid = ref.source.num_blocks // 2
        print(f"# {ns.model} {ns.shape or ns.checkpoint or 'preset'} {in_label}: {len(ref.ids)} tokens, reference {ref_s:.1f} s", flush=True)
        jobs = [(lbl, replace(base, candidate=c, dtype=dt, **kw), None) for lbl, c, dt, kw, _ in clean]
        for f in (FAULTS if ns.faults is None else ns.faults):
            for dt in ns.fault_dtypes:
                spec = f.format(mid=mid)
                jobs.append((f"port-{dt}+{spec}", replace(base, candidate="port", dtype=dt, faults=[spec]), spec))
        for label, opts, fault in jobs:
            t0 = time.perf_counter()
            try:
                res = compare_candidate(ref, opts)
            except Exception as exc:  # noqa: BLE001 - record and go on
                line = {"label": label, "error": f"{type(exc).__name__}: {exc}"}
            else:
                line = summarize(label, opts, res, time.perf_counter() - t0, fault, ref.source.family.name)
            line.update(model=ns.model, source=ns.shape or (Path(ns.checkpoint).name if ns.checkpoint else "preset"), input=in_label,
                        machine=ns.machine or _machine())
            with out.open("a") as fh:
                fh.write(json.dumps(line) + "\n")
            print(json.dumps(line), flush=True)
        del ref
    return 0


def _machine() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


if __name__ == "__main__":
    sys.exit(main())

"""Run parity on the mutants in-process and score its diagnosis against each mutant's ground truth.

    PYTHONPATH=. python tests/mutants/run.py [--sample N] [--seed S] [--out benchmarks/mutants.jsonl]

A case is (family, dtype, mutant, layer, which norm): the mutant's port must run and change
the logits (relative max change over 1e-3 of the clean port's logits in float32; 1e-2 for a
float16 case, whose rounding would hide less). For each case: localized (parity's diagnosis
names the mutated block and the component of the probe the change first shows at), named
right (the winning hypothesis, as a label, is one of the mutant's truth labels), named wrong
(a name outside them), or unnamed. The last line of the output file is the summary.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import factory  # noqa: E402
import generate  # noqa: E402
import truth as truth_mod  # noqa: E402

FAMILIES = ("llama", "qwen2", "qwen")
DTYPES = ("fp32", "fp16")
TOKENS = 16
PORT = f"{HERE / 'factory.py'}:build"
PORT_MAP = str(ROOT / "probes" / "engine_port.toml")
REFERENCES: dict[tuple[str, str], Any] = {}


def _num(expr: str, facts: dict[str, Any]) -> float | None:
    d, h, base = facts.get("head_dim") or 32, facts.get("num_heads") or 4, facts.get("rope_base") or 1e4
    table = {"1": 1.0, "sqrt(d)": math.sqrt(d), "1/d": 1.0 / d, "1/sqrt(heads)": 1 / math.sqrt(h), "2": 2.0,
             "1/base": 1.0 / base, "base^(-1/d)": base ** (-1.0 / d), "d/2": d / 2, "0": 0.0}
    if expr in table:
        return table[expr]
    try:
        return float(expr)
    except ValueError:
        return None


def label_of(diag: dict[str, Any]) -> str | None:
    """parity's named cause as a truth label (None: nothing named)."""
    name = diag.get("named_cause")
    if not name:
        return None
    win = next((h for h in diag.get("hypotheses", []) if h["fits"]), {})
    return hyp_label(win.get("name", name), win.get("params", {}), diag.get("probe", ""))


def hyp_label(name: str, p: dict[str, Any], probe: str) -> str:
    point = probe.split(".", 2)[-1]
    if name == "softmax-scale":
        return f"softmax-scale={p['scale']:.6g}"
    if name == "mask-shift":
        return f"mask-shift={p['shift']}"
    if name == "rotary-shift":
        return f"rotary-shift={p['k']}"
    if name == "rotary-partial":
        return f"rotary-partial={p['rotary_dim']}"
    if name == "rotary-base":
        return f"rotary-base={p['base']:.6g}"
    if name == "transposed-weight":
        return f"transposed:{p['projection'].replace('attn.', '')}"
    if name == "activation-wrong-branch":
        return "act-wrong-branch"
    if name == "activation-function":
        return f"act:{p['activation']}"
    if name == "permutation":
        own = point.replace("attn.", "")[0]
        kinds = {m[0] for m in p.get("mapping") or []}
        return f"heads:{own}<-{kinds.pop()}" if len(kinds) == 1 and own not in kinds else f"permutation:{p.get('layout')}"
    if "label" in p:  # the generic hypotheses give their own label
        return p["label"]
    return name


def canonical(label: str) -> str:
    """A sum's terms in one order (a+b is b+a)."""
    if label.startswith("expr:") and "+" in label and "-" not in label and "(" not in label:
        return "expr:" + "+".join(sorted(label[5:].split("+")))
    return label


def matches(label: str | None, expected: set[str], facts: dict[str, Any]) -> bool:
    if label is None:
        return False
    if canonical(label) in {canonical(e) for e in expected}:
        return True
    if "=" in label:
        key, val = label.split("=", 1)
        got = _num(val, facts)
        for e in expected:
            k2, _, v2 = e.partition("=")
            want = _num(v2, facts)
            if k2 == key and got is not None and want is not None and math.isclose(got, want, rel_tol=1e-2, abs_tol=1e-9):
                return True
    return False


def cases(seed: int) -> list[dict[str, Any]]:
    """Every (family, dtype, mutant, norm) with a truth entry, each at a seeded layer in 1..n-2."""
    rng = random.Random(seed)
    out = []
    for m in generate.generate():
        norms = ("input", "post", "final") if m.function == "FusedAddRMSNorm.forward" else ("input",)
        for fam in FAMILIES:
            for dt in DTYPES:
                for norm in norms:
                    out.append({"family": fam, "dtype": dt, "mutant": m, "norm": norm, "layer": rng.choice((1, 2))})
    return out


class Clean:
    """The clean port's logits per family (the change a mutant makes is measured against them)."""

    def __init__(self) -> None:
        self.cache: dict[str, Any] = {}

    def get(self, fam: str) -> tuple[Any, Any, Any, Any]:
        if fam not in self.cache:
            from parity.loading.source import ModelSource

            src = ModelSource.resolve(fam)
            model = src.build("cpu")
            sd = model.state_dict()
            ids = torch.randint(3, 1000, (1, TOKENS), generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                base = factory.clean_port(src.config, sd).eval()(ids).logits
            self.cache[fam] = (src, sd, ids, base)
        return self.cache[fam]


CLEAN = Clean()  # one per process


def changes_logits(case: dict[str, Any], clean: Clean) -> str:
    src, sd, ids, base = clean.get(case["family"])
    m = case["mutant"]
    port = factory.clean_port(src.config, sd).eval()
    try:
        factory.apply(port, m.source(), m.function, case["layer"], case["norm"])
        with torch.no_grad():
            out = port(ids).logits
    except Exception:  # noqa: BLE001 - a mutant that does not run is no case
        return "crash"
    if out.shape != base.shape:
        return "crash"
    if not torch.isfinite(out).all():
        return "nonfinite"
    rel = ((out - base).abs().max() / base.abs().max()).item()
    if rel <= (1e-2 if case["dtype"] == "fp16" else 1e-3):
        return "same"
    if case["dtype"] == "fp16":  # a mutant that cannot run in half precision is no fp16 case
        try:
            with torch.no_grad():
                half = port.half()(ids).logits
        except Exception:  # noqa: BLE001
            return "crash"
        if not torch.isfinite(half).all():
            return "nonfinite"
    return "changed"


def run_case(case: dict[str, Any], num_blocks: int) -> dict[str, Any]:
    from parity.capture import probes as canon
    from parity.options import RunOptions
    from parity.run.candidate import compare_candidate
    from parity.run.reference import prepare_reference

    m = case["mutant"]
    exp = truth_mod.truth(m.id, case["norm"], case["layer"], num_blocks)
    factory.CURRENT.clear()
    factory.CURRENT.update(source=m.source(), function=m.function, layer=case["layer"], norm=case["norm"])
    t0 = time.perf_counter()
    try:
        opts = RunOptions(model=case["family"], candidate="port", port=PORT, port_map=PORT_MAP, dtype=case["dtype"],
                          device="cpu", tokens=TOKENS)
        key = (case["family"], case["dtype"])
        if key not in REFERENCES:  # the reference and its precision twin, once per family and dtype
            REFERENCES[key] = prepare_reference(opts)
        s = compare_candidate(REFERENCES[key], opts).report.summary
        err = None
    except Exception as exc:  # noqa: BLE001 - parity's own failure is a result
        s, err = {}, f"{type(exc).__name__}: {exc}"[:300]
    finally:
        factory.CURRENT.clear()
    diag = s.get("diagnosis") or {}
    probe = diag.get("probe") or (s.get("first_divergence") or {}).get("probe")
    shape = re.search(r"^ProbeError: probe '([^']+)'", err or "")
    if shape:  # parity refused to compare a probe whose shape changed: it said where
        probe = shape.group(1)
        diag = {"block": canon.parse(probe).block, "probe": probe}
    rec = {"id": m.id, "op": m.op, "function": m.function, "change": m.after[:160], "family": case["family"],
           "dtype": case["dtype"], "layer": case["layer"], "norm": case["norm"], "verdict": s.get("verdict"),
           "probe": probe, "block": diag.get("block"), "named_cause": diag.get("named_cause"),
           "hint": (diag.get("hint") or "")[:400], "seconds": round(time.perf_counter() - t0, 2), "error": err}
    if exp is None:
        rec["truth"] = None
        return rec
    points, labels, block = exp
    rec["truth"] = {"points": sorted(points), "labels": sorted(labels), "block": block}
    facts = (diag.get("targeted") or {}).get("facts") or {}
    comps = {canon.parse(p if block is None or p in ("rope.cos", "rope.sin", "final_norm") else f"blocks.{block}.{p}").component
             for p in points}
    got = canon.parse(probe).component if probe else None
    rec["localized"] = bool(probe) and diag.get("block") == block and got in comps
    rec["label"] = label_of(diag)
    rec["equivalent"] = [hyp_label(h["name"], h["params"], probe or "") for h in diag.get("equivalent", [])]
    rec["named_right"] = any(matches(x, labels, facts or {"head_dim": 32, "num_heads": 4, "rope_base": 1e6 if case["family"] == "qwen2" else 1e4})
                             for x in [rec["label"], *rec["equivalent"]]) if rec["label"] else False
    rec["named_wrong"] = rec["label"] is not None and not rec["named_right"]
    return rec


def summarize(recs: list[dict[str, Any]]) -> dict[str, Any]:
    scored = [r for r in recs if r.get("truth") is not None]
    n = len(scored)
    unnamed = Counter(f"{r['op']} {r['id']}" for r in scored if not r["named_right"] and not r["named_wrong"])
    wrong = Counter(f"{r['op']} {r['id']} -> {r['label']}" for r in scored if r["named_wrong"])
    by_op: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in scored:
        by_op[r["op"]][0] += 1
        by_op[r["op"]][1] += int(r["named_right"])
    return {"summary": True, "cases": n, "localized": sum(r["localized"] for r in scored) / max(n, 1),
            "named_right": sum(r["named_right"] for r in scored) / max(n, 1),
            "named_wrong": sum(r["named_wrong"] for r in scored) / max(n, 1),
            "unnamable_truth": sum(1 for r in scored if not r["truth"]["labels"]),
            "families": dict(Counter(r["family"] for r in scored)), "dtypes": dict(Counter(r["dtype"] for r in scored)),
            "named_by_operator": {k: f"{v[1]}/{v[0]}" for k, v in sorted(by_op.items())},
            "unnamed": dict(unnamed.most_common()), "wrong": dict(wrong.most_common()),
            "no_truth": sum(1 for r in recs if r.get("truth") is None),
            "parity_errors": sum(1 for r in recs if r.get("error"))}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sample", type=int, default=0, help="score this many cases (seeded); 0: all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default=None, help="comma-separated mutant ids")
    a = ap.parse_args(argv)
    clean = CLEAN
    todo = cases(a.seed)
    if a.only:
        todo = [c for c in todo if c["mutant"].id in a.only.split(",")]
    todo = [c for c in todo if truth_mod.truth(c["mutant"].id, c["norm"], c["layer"], 4) is not None]
    rng = random.Random(a.seed)
    rng.shuffle(todo)
    recs: list[dict[str, Any]] = []
    for c in todo:
        if a.sample and len(recs) >= a.sample:
            break
        if changes_logits(c, clean) != "changed":
            continue
        rec = run_case(c, 4)
        recs.append(rec)
        print(f"{rec['id']} {rec['family']:5s} {rec['dtype']} L{rec['layer']} {rec['norm']:5s} "
              f"loc={int(rec.get('localized', 0))} right={int(rec.get('named_right', 0))} "
              f"wrong={int(rec.get('named_wrong', 0))} {rec.get('label')} | {rec['change'][:70]}", flush=True)
    summary = summarize(recs)
    if a.out:
        with open(a.out, "w") as f:
            for r in sorted(recs, key=lambda r: (r["id"], r["family"], r["dtype"], r["norm"])):
                f.write(json.dumps(r) + "\n")
            f.write(json.dumps(summary) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("unnamed", "wrong")}, indent=1))
    return summary


if __name__ == "__main__":
    main()

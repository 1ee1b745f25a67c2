"""``parity dump`` (write a parity dump from any backend) and ``parity compare A B``
(compare two dumps of any layout)."""
from __future__ import annotations

import argparse
from typing import Any

from parity.cli.common import add_groups
from parity import dtypes
from parity.options import dtype_arg, run_options



def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("dump", parents=[common], help="write probe tensors of the reference or a candidate to a parity dump")
    add_groups(p, ("model", "input", "candidate", "engine"))
    p.add_argument("--probes", "-p", action="append", metavar="GLOB", help="probes to dump (globs)")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="dump folder to write")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_dump, candidate="reference")

    p = sub.add_parser("compare", parents=[common], help="compare two dumps (A is the reference side)")
    p.add_argument("a", metavar="A", help="reference dump folder")
    p.add_argument("b", metavar="B", help="candidate dump folder")
    p.add_argument("--model", "-m", help="model family (for canonical shapes, TP reassembly, tolerances; default: A's manifest)")
    p.add_argument("--dtype", type=dtype_arg, help="tolerance table to use: fp32, fp16, bf16 (or float16...; default: B's dtype)")
    p.add_argument("--dump-map", metavar="TOML", help="name map for non-parity dumps (both sides)")
    p.add_argument("--atol", type=float)
    p.add_argument("--rtol", type=float)
    p.add_argument("--out", "-o", metavar="DIR", help="write report.json / probes.csv there")
    p.add_argument("--failures-only", action="store_true")
    p.set_defaults(func=cmd_compare)


def cmd_dump(ns: argparse.Namespace) -> int:
    from parity.cli.common import with_model
    from parity.engines.checks import check_options
    from parity.outputs import Outputs

    opts = with_model(run_options(ns), ns)
    check_options(opts)
    with Outputs(ns.out) as outputs:
        return _dump(ns, opts, outputs)


def _dump(ns: argparse.Namespace, opts: Any, outputs: Any) -> int:
    from parity import engines
    from parity.capture import probes as canon
    from parity.engines.torch.runner import ModuleBackend, check_device
    from parity.cli.common import progress
    from parity.capture.sinks import Capture, Recorder
    from parity.loading.dumps import write_dump
    from parity.capture.probemap import find_map
    from parity.loading.inputs import resolve_inputs
    from parity.engines.contract import EngineContext
    from parity.loading.source import ModelSource

    device = check_device(opts.device)
    source = ModelSource.resolve(opts.model, opts.checkpoint, opts.seed, opts.trust_remote_code,
                                 family_dirs=opts.family_dirs)
    pmap = find_map(source.probe_map_name, opts.probe_dirs)
    selected = canon.select(pmap.names(source.num_blocks), opts.probes)
    ids = resolve_inputs(opts, source)
    prog = progress(ns.quiet)
    say = prog if prog is not None else (lambda s: None)
    say("building reference")
    ref_model = source.build(check_device(opts.ref_device or device))
    if opts.candidate == "reference":
        backend = ModuleBackend(ref_model, pmap, getattr(ref_model, "config", source.config), "reference", source.num_blocks)
    else:
        say(f"building candidate ({opts.candidate})")
        engine = engines.load(opts.candidate)
        backend = engine.create(EngineContext(engine.prepare(opts, say), source, pmap, ref_model, device))
    offered = set(backend.available_probes())
    wanted = [p for p in selected if p in offered]
    cap = Capture(backend.label, backend.describe())
    say(f"running {backend.label}")
    with backend:
        backend.capture(ids, wanted, Recorder(cap, keep=True, store_device="cpu"))
    say("writing the dump")
    meta = {"model": source.family.name, "source": source.label, "seed": source.seed, "backend": backend.describe(),
            "dtype": backend.describe().get("dtype"), "input_ids": ids,
            "not_exposed": [p for p in selected if p not in offered]}
    write_dump(outputs.dir, {n: r.tensor for n, r in cap.records.items()}, meta)
    outputs.commit()
    if prog is not None:
        prog.close()
    from parity.cli.common import say as out_line

    out_line(f"Dump: {ns.out} ({len(cap.records)} probes from {backend.label}; {len(meta['not_exposed'])} not exposed)")
    return 0


def _tolerances(model: str | None, dtype: str | None, atol: float | None, rtol: float | None) -> Any:
    from parity.loading.families import get
    from parity.compare.tolerances import table_from

    if model is None:
        return table_from({"default": {"atol": 1e-3 if atol is None else atol, "rtol": 1e-3 if rtol is None else rtol}})
    return get(model).preset().tolerance_table(dtype or "fp32").override(atol, rtol)


def cmd_compare(ns: argparse.Namespace) -> int:
    from parity.engines.checks import check_tolerances
    from parity.outputs import Outputs

    check_tolerances(ns.atol, ns.rtol)

    with Outputs(ns.out) if ns.out else Outputs() as outputs:
        return _compare(ns, outputs)


def _compare(ns: argparse.Namespace, outputs: Any) -> int:
    from parity.capture import probes as canon
    from parity.capture.sinks import Capture, Comparator, Recorder
    from parity.verdict.diagnose import diagnose
    from parity.loading.dumps import canonical_shape, load_name_map, read_dump
    from parity.errors import UsageError
    from parity.report import console, files
    from parity.report.data import ReportData
    from parity.run.candidate import build_rows

    nm = load_name_map(ns.dump_map)
    a, b = read_dump(ns.a, nm), read_dump(ns.b, nm)
    model = ns.model or a.meta.get("model") or b.meta.get("model")
    cfg = None
    if model is not None:
        from parity.loading.source import ModelSource

        cfg = ModelSource.resolve(model).config
    ids_a, ids_b = a.input_ids, b.input_ids
    if ids_a is not None and ids_b is not None and list(ids_a) != list(ids_b):
        raise UsageError(f"dumps {a.folder} and {b.folder} were made from different input ids.",
                         note="dump both sides from the same --input-ids")
    tokens = len(ids_a or ids_b or [])
    found = dtypes.find(b.meta.get("dtype"))  # B's tensors' dtype (spelled long, as tensors' are)
    dtype = ns.dtype or (found if found is not None and found.long == b.meta.get("dtype") else None)
    tols = _tolerances(model, dtype, ns.atol, ns.rtol)

    def shape(p: str) -> list[int] | None:
        return canonical_shape(canon.parse(p).point, cfg, tokens) if cfg is not None and tokens else None

    ref_cap, cand_cap = Capture("A", {"dump": str(a.folder)}), Capture("B", {"dump": str(b.folder)})
    rec, comp = Recorder(ref_cap, keep=True), Comparator(ref_cap, cand_cap, tols)
    names = canon.in_order(set(a.probes) | set(b.probes))
    for p in names:
        if p in a.shards and p in b.shards:
            rec(p, a.tensor(p, shape(p)))
            comp(p, b.tensor(p, shape(p)))
    rows = build_rows(names, set(b.probes), ref_cap, cand_cap, comp.diffs, tols)
    for r in rows:
        if r.status == "not captured":
            r.status = "not in A"
    run = {"command": "compare", "a": str(a.folder), "b": str(b.folder), "a_layout": a.layout, "b_layout": b.layout,
           "model": model, "dtype": dtype, "tolerances": tols.to_dict(),
           "reference": {"backend": "A", **{k: v for k, v in a.meta.items() if k in ("backend", "dtype")}},
           "candidate": {"backend": "B", **{k: v for k, v in b.meta.items() if k in ("backend", "dtype")}}}
    report = ReportData(run=run, probes=rows, summary=diagnose(rows, dtypes.parse(dtype or "fp32").long))
    console.render(report, show_all=not getattr(ns, "failures_only", False), wide=getattr(ns, "wide", False),
                   every_row=getattr(ns, "every_row", False))
    if ns.out:
        paths = files.write(report, outputs.dir)
        line = f"Reports: {outputs.final(paths['json'])}  {outputs.final(paths['csv'])}"
        outputs.commit()
        from parity.cli.common import say

        say(line)
    return 0 if report.summary.passed else 1

"""Bisect: find the first divergent probe while marking only a few probes per build.

Marking every probe as an engine output changes what the engine may fuse or reorder,
which can hide or move a bug. ``execute_bisect`` captures the reference once, then makes
builds of the candidate that each mark ``marks`` probes (default 1):

1. build 1 marks only the last probe in execution order (``logits``: the engine as
   shipped). If it passes, the search stops: no divergence reaches the output.
2. otherwise the first failing probe lies in ``order[lo..hi]`` with ``hi`` failing; each
   build marks ``marks`` evenly spaced probes inside that range and keeps the sub-range
   before the first failing one.

With one mark per build that is at most ``ceil(log2 P) + 1`` builds for P probes. The
search assumes divergence persists downstream once it starts (true of a step fault);
the answer's predecessor was measured passing in some build, and the report says which
builds marked what.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from parity import backends
from parity import probes as canon
from parity.capture import Capture, Comparator, Recorder
from parity.diagnose import diagnose
from parity.errors import UsageError
from parity.options import RunOptions
from parity.probemap import find_map
from parity.report.data import ReportData
from parity.run import CandidateContext, Progress, RunResult, _stage, build_rows, resolve_inputs, run_facts
from parity.source import ModelSource


@dataclass
class Build:
    marked: list[str]
    failed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"marked": self.marked, "failed": self.failed}


def max_builds(num_probes: int, marks: int = 1) -> int:
    """Worst-case build count: one for the output, then ceil(log_{marks+1} P)."""
    if num_probes <= 1:
        return 1
    return 1 + math.ceil(math.log(num_probes) / math.log(marks + 1) - 1e-12)


def search(order: list[str], measure: Any, marks: int = 1) -> tuple[str | None, list[Build]]:
    """First failing probe of ``order`` using ``measure(probes) -> set of failing probes``."""
    if marks < 1:
        raise UsageError("--bisect-marks must be at least 1.")
    builds: list[Build] = []

    def run(probes: list[str]) -> set[str]:
        failed = measure(probes)
        builds.append(Build(list(probes), [p for p in probes if p in failed]))
        return failed

    if not order:
        return None, builds
    if order[-1] not in run([order[-1]]):
        return None, builds
    lo, hi = 0, len(order) - 1  # the answer lies in order[lo..hi]; order[hi] fails
    while lo < hi:
        span = hi - lo  # candidates strictly before hi
        picks = sorted({lo + (span * j) // (marks + 1) for j in range(1, marks + 1)})
        failed = run([order[i] for i in picks])
        bad = [i for i in picks if order[i] in failed]
        if bad:
            hi = bad[0]
            lo = max([lo] + [i + 1 for i in picks if i < hi])
        else:
            lo = picks[-1] + 1
    return order[hi], builds


def execute_bisect(opts: RunOptions, progress: Progress | None = None, marks: int = 1) -> RunResult:
    from parity.backends.pytorch import ModuleBackend, check_device, torch_dtype

    timings: dict[str, float] = {}
    torch_dtype(opts.dtype)
    device = check_device(opts.device)
    ref_device = check_device(opts.ref_device or device)
    cand_mod = backends.load(opts.candidate)
    source = ModelSource.resolve(opts.model, opts.checkpoint, opts.seed, opts.trust_remote_code)
    pmap = find_map(source.preset.probe_map, opts.probe_dirs)
    selected = canon.select(pmap.names(source.num_blocks), opts.probes)
    ids = resolve_inputs(opts, source)
    tols = source.preset.tolerance_table(opts.dtype).override(opts.atol, opts.rtol)

    with _stage(progress, "building reference", timings):
        ref_model = source.build(ref_device)
    reference = ModuleBackend(ref_model, pmap, getattr(ref_model, "config", source.config), "reference", source.num_blocks)
    ref_cap = Capture("reference", reference.describe())
    with _stage(progress, "running reference (once)", timings), reference:
        reference.capture(ids, selected, Recorder(ref_cap, keep=True, store_device="cpu"))

    with _stage(progress, f"preparing candidate ({opts.candidate})", timings):
        cand = cand_mod.create(CandidateContext(opts, source, pmap, ref_model, device))
    del ref_model
    offered = set(cand.available_probes())
    order = [p for p in selected if p in offered]
    cand_cap = Capture(cand.label, cand.describe())
    diffs: dict[str, Any] = {}

    def measure(probes: list[str]) -> set[str]:
        comparator = Comparator(ref_cap, cand_cap, tols, keep=opts.keep_tensors)
        if progress is not None:
            progress(f"build marking {', '.join(probes)}")
        cand.capture(ids, probes, comparator)
        diffs.update(comparator.diffs)
        return {p for p, d in comparator.diffs.items() if not d.passed}

    with _stage(progress, f"bisecting candidate ({opts.candidate})", timings), cand:
        answer, builds = search(order, measure, marks)

    rows = build_rows(selected, offered, ref_cap, cand_cap, diffs, tols)
    for r in rows:
        if r.status == "not captured":
            r.status = "not measured"
    cand_meta = {**cand.describe(), "mode": "bisect"}
    facts = run_facts(opts, source, reference.describe(), cand_meta, ids, tols, timings)
    summary = diagnose(rows, cand_cap.meta.get("dtype"))
    summary["bisect"] = {
        "probes_in_order": len(order), "marks_per_build": marks, "builds_made": len(builds),
        "max_builds": max_builds(len(order), marks), "answer": answer,
        "builds": [b.to_dict() for b in builds],
    }
    if answer is None and builds:
        summary["message"] = f"bisect: the last probe ({order[-1]}) passes in the engine as built; no divergence reaches the output"
    return RunResult(ReportData(run=facts, probes=rows, summary=summary), ref_cap, cand_cap, ids)


def render_builds(summary: dict[str, Any]) -> str:
    b = summary.get("bisect")
    if not b:
        return ""
    lines = [f"bisect: {b['builds_made']} build(s) for {b['probes_in_order']} probes "
             f"(bound {b['max_builds']}), {b['marks_per_build']} mark(s) per build"]
    for i, build in enumerate(b["builds"], 1):
        verdict = "FAIL " + ",".join(build["failed"]) if build["failed"] else "pass"
        lines.append(f"  build {i}: marked {', '.join(build['marked'])} -> {verdict}")
    lines.append(f"first divergent probe: {b['answer'] or 'none (output passes)'}")
    return "\n".join(lines)

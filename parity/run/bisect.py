"""Bisect: find the first divergent probe while marking only a few probes per build.

Marking every probe as an engine output changes what the engine may fuse or reorder,
which can hide or move a bug. ``execute_bisect`` captures the reference once, then makes
builds of the candidate that each mark ``marks`` probes (default 1):

1. build 1 marks only the last probe in execution order (``logits``: the engine as
   shipped). If it passes, the search stops: no divergence reaches the output.
2. otherwise the first failing probe lies in ``order[lo..hi]`` with ``hi`` failing; each
   build marks ``marks`` evenly spaced probes inside that range and keeps the sub-range
   before the first failing one.

Probes on parallel branches (``attn.q/k/v``; ``attn.q_rot/k_rot``; ``rope.cos/sin``) are one
*unit*, marked together: a fault in q leaves k and v passing, which would mislead a search
over single probes. With one unit per build that is at most ``ceil(log2 U) + 1 <=
ceil(log2 P) + 1`` builds for U units of P probes. The search assumes divergence persists
downstream once it starts (true of a step fault); the report lists every build, what it
marked and what failed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from parity import engines
from parity.capture import probes as canon
from parity.capture.sinks import Capture, Comparator
from parity.verdict.diagnose import diagnose
from parity.errors import UsageError
from parity.options import RunOptions
from parity.report.data import ReportData
from parity.run.candidate import build_rows, run_facts
from parity.engines.contract import EngineContext
from parity.run.common import Progress, RunResult, stage
from parity.run.reference import prepare_reference
from parity.run.twin import NO_ELEMENT_TOLERANCE, calibration_for, measure_twin


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


# Probes on parallel branches: none is downstream of another, so a fault in q leaves k and v
# passing. Each group is searched as one unit (marked together, failing when any member fails).
PARALLEL = (("attn.q", "attn.k", "attn.v"), ("attn.q_rot", "attn.k_rot"), ("rope.cos", "rope.sin"))


def units(order: list[str]) -> list[list[str]]:
    """``order`` cut into units: parallel-branch probes of one block together, others alone."""
    out: list[list[str]] = []
    last_key: tuple[int | None, int] | None = None
    for name in order:
        p = canon.parse(name)
        group = next((g for g, pts in enumerate(PARALLEL) if p.point in pts), None)
        key = (p.block, group) if group is not None else None
        if key is not None and key == last_key:
            out[-1].append(name)
        else:
            out.append([name])
        last_key = key
    return out


def search(order: list[str], measure: Any, marks: int = 1) -> tuple[str | None, list[Build]]:
    """First failing probe of ``order`` using ``measure(probes) -> set of failing probes``.

    The search runs over :func:`units`; ``marks`` units are marked per build."""
    if marks < 1:
        raise UsageError("--bisect-marks must be at least 1.")
    builds: list[Build] = []
    us = units(order)

    def run(picked: list[int]) -> list[int]:
        probes = [p for i in picked for p in us[i]]
        failed = measure(probes)
        builds.append(Build(probes, [p for p in probes if p in failed]))
        return [i for i in picked if any(p in failed for p in us[i])]

    if not us:
        return None, builds
    if not run([len(us) - 1]):
        return None, builds
    lo, hi = 0, len(us) - 1  # the answer lies in units[lo..hi]; units[hi] fails
    while lo < hi:
        span = hi - lo  # candidates strictly before hi
        picks = sorted({lo + (span * j) // (marks + 1) for j in range(1, marks + 1)})
        bad = run(picks)
        if bad:
            hi = bad[0]
            lo = max([lo] + [i + 1 for i in picks if i < hi])
        else:
            lo = picks[-1] + 1
    failing = builds_failed(builds, us[hi])
    return (failing[0] if failing else us[hi][0]), builds


def builds_failed(builds: list[Build], unit: list[str]) -> list[str]:
    """Members of ``unit`` seen failing in any build, in execution order."""
    seen = {p for b in builds for p in b.failed}
    return [p for p in unit if p in seen]


def execute_bisect(opts: RunOptions, progress: Progress | None = None, marks: int = 1) -> RunResult:
    """Reference once (and its precision twin, for calibrated verdicts), then the builds."""
    engine = engines.load(opts.candidate)
    opts = replace(engine.prepare(opts, progress), isolate=False)  # builds mark few probes: no teacher-forced pass
    ref = prepare_reference(opts, progress)
    timings = dict(ref.timings)
    calib = calibration_for(opts, False)
    tols = NO_ELEMENT_TOLERANCE if calib.calibrated else ref.source.preset.tolerance_table(opts.dtype).override(opts.atol, opts.rtol)
    calib.twin = measure_twin(ref, opts, calib, progress, timings, skip_if_candidate=False)
    source, selected, ids, ref_cap = ref.source, ref.selected, ref.ids, ref.capture

    with stage(progress, f"preparing candidate ({opts.candidate})", timings):
        cand = engine.create(EngineContext(opts, source, ref.probe_map, ref.model, ref.device))
    ref.model = None
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
        return {p for p, d in comparator.diffs.items() if not calib.judge(p, d, ref_cap.records[p].stats.abs_max)}

    with stage(progress, f"bisecting candidate ({opts.candidate})", timings), cand:
        answer, builds = search(order, measure, marks)

    rows = build_rows(selected, offered, ref_cap, cand_cap, diffs, tols, calib)
    for r in rows:
        if r.status == "not captured":
            r.status = "not measured"
    cand_meta = {**cand.describe(), "mode": "bisect"}
    facts = run_facts(opts, source, ref.facts, cand_meta, ids, tols, timings, calib)
    summary = diagnose(rows, cand_cap.meta.get("dtype"), calibration=calib)
    summary["bisect"] = {
        "probes_in_order": len(order), "units": len(units(order)), "marks_per_build": marks,
        "builds_made": len(builds), "max_builds": max_builds(len(units(order)), marks), "answer": answer,
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

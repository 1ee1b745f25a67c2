"""Plain-text failure explanation for pytest assertions: the first divergent probe, its
statistics against its tolerance, the diagnosis, and the neighbouring probes. Reads
ReportData only."""
from __future__ import annotations

from parity.report.console import fmt
from parity.report.data import ProbeRow, ReportData

NEIGHBOURS = 3


def headline(report: ReportData) -> str:
    run, cand = report.run, report.run.get("candidate") or {}
    ref = run.get("reference") or {}
    return (f"{run.get('model')} ({run.get('source')}): {cand.get('name')} {cand.get('dtype')} {cand.get('device')} "
            f"vs reference {ref.get('dtype')} {ref.get('device')}, {run.get('tokens')} tokens")


def _row_line(r: ProbeRow, mark: str) -> str:
    return (f"{mark} {r.name:22s} {r.status:11s} {fmt(r.max_abs_err, 3):>10s} {fmt(r.atol, 3):>8s} {fmt(r.rtol, 3):>8s} "
            f"{fmt(r.nrmse, 3):>10s} {('-' if r.cosine is None else f'{r.cosine:.6f}'):>9s}")


def neighbours(report: ReportData, name: str, k: int = NEIGHBOURS) -> list[str]:
    idx = next(i for i, r in enumerate(report.probes) if r.name == name)
    lo, hi = max(0, idx - k), min(len(report.probes), idx + k + 1)
    head = f"  {'probe':22s} {'status':11s} {'max_abs':>10s} {'atol':>8s} {'rtol':>8s} {'nrmse':>10s} {'cosine':>9s}"
    return [head] + [_row_line(r, ">" if i == idx else " ") for i, r in enumerate(report.probes[lo:hi], lo)]


def explain(report: ReportData) -> str:
    s = report.summary
    lines = [f"parity: {s.get('message')}", f"  run: {headline(report)}"]
    fd = s.get("first_divergence")
    if fd:
        r = report.row(fd["probe"])
        lines.append(f"  first divergent probe: {r.name} (block {fd.get('block')}, {fd.get('component')}; {fd.get('classification')})")
        lines.append(f"    max_abs_err {fmt(r.max_abs_err)} vs tolerance atol {fmt(r.atol)} + rtol {fmt(r.rtol)}*|ref|: "
                     f"{r.n_bad} of {r.numel} elements over")
        lines.append(f"    worst element: token {r.worst_token}, channel {r.worst_channel}, ref {fmt(r.worst_ref)} cand {fmt(r.worst_cand)}; "
                     f"nrmse {fmt(r.nrmse, 3)}, cosine {fmt(r.cosine, 6)}, nan/inf {r.nan}/{r.inf}")
        lines.append(f"    last matched: {fd.get('last_matched') or 'none'}")
    diag = s.get("diagnosis")
    if diag:
        lines.append(f"  diagnosis: {diag.get('hint')}")
        lines += [f"    - {ev}" for ev in diag.get("evidence", [])]
    if fd:
        lines.append("  neighbouring probes:")
        lines += ["  " + ln for ln in neighbours(report, fd["probe"])]
    return "\n".join(lines)

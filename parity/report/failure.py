"""Plain-text failure explanation for pytest assertions: the first divergent probe, its
statistics against its tolerance (absolute runs) or against the precision twin's error
(calibrated runs), the diagnosis, and the neighbouring probes. Reads ReportData only."""
from __future__ import annotations

from typing import Any

from parity.report.console import calibrated, fmt, xfmt
from parity.report.data import ProbeRow, ReportData

NEIGHBOURS = 3


def headline(report: ReportData) -> str:
    run, cand = report.run, report.run.get("candidate") or {}
    ref = run.get("reference") or {}
    return (f"{run.get('model')} ({run.get('source')}): {cand.get('name')} {cand.get('dtype')} {cand.get('device')} "
            f"vs reference {ref.get('dtype')} {ref.get('device')}, {run.get('tokens')} tokens")


def _cos(r: ProbeRow) -> str:
    return "-" if r.cosine is None else f"{r.cosine:.6f}"


def _row_line(r: ProbeRow, mark: str, excess: bool) -> str:
    mid = (f"{fmt(r.twin_max_abs_err, 3):>10s} {xfmt(r.excess):>8s}" if excess
           else f"{fmt(r.atol, 3):>8s} {fmt(r.rtol, 3):>8s}")
    return f"{mark} {r.name:22s} {r.status:11s} {fmt(r.max_abs_err, 3):>10s} {mid} {fmt(r.nrmse, 3):>10s} {_cos(r):>9s}"


def neighbours(report: ReportData, name: str, k: int = NEIGHBOURS) -> list[str]:
    """The probes around ``name``: excess and the twin's max abs (calibrated) or atol/rtol."""
    excess = calibrated(report)
    idx = next(i for i, r in enumerate(report.probes) if r.name == name)
    lo, hi = max(0, idx - k), min(len(report.probes), idx + k + 1)
    mid = f"{'twin_max':>10s} {'excess':>8s}" if excess else f"{'atol':>8s} {'rtol':>8s}"
    head = f"  {'probe':22s} {'status':11s} {'max_abs':>10s} {mid} {'nrmse':>10s} {'cosine':>9s}"
    return [head] + [_row_line(r, ">" if i == idx else " ", excess) for i, r in enumerate(report.probes[lo:hi], lo)]


def _budget(report: ReportData) -> Any:
    return report.summary.get("budget", (report.run.get("verdict") or {}).get("budget"))


def _against(report: ReportData, r: ProbeRow) -> list[str]:
    """How the first divergent probe's error compares with what it was judged against."""
    if not calibrated(report):
        return [f"    max_abs_err {fmt(r.max_abs_err)} vs tolerance atol {fmt(r.atol)} + rtol {fmt(r.rtol)}*|ref|: "
                f"{r.n_bad} of {r.numel} elements over"]
    twin = (report.run.get("verdict") or {}).get("twin") or {}
    budget = _budget(report)
    over = r.excess is None or budget is None or not r.excess <= budget
    why = "" if over else f"; within the budget but it turned finite values into nan/inf ({r.nan}/{r.inf})"
    lines = [f"    excess {xfmt(r.excess)} {'>' if over else '<='} budget {xfmt(budget)} over the precision twin "
             f"({twin.get('label') or 'the reference in the candidate dtype'}): "
             f"nrmse {fmt(r.nrmse, 3)} vs twin {fmt(r.twin_nrmse, 3)}, "
             f"max_abs_err {fmt(r.max_abs_err, 3)} vs twin {fmt(r.twin_max_abs_err, 3)}{why}"]
    if r.isolated_excess is not None:
        lines.append(f"    isolated (teacher-forced) excess {xfmt(r.isolated_excess)}, "
                     f"max_abs_err {fmt(r.isolated_max_abs_err, 3)}")
    return lines


def explain(report: ReportData) -> str:
    s = report.summary
    lines = [f"parity: {s.get('message')}", f"  run: {headline(report)}"]
    fd = s.get("first_divergence")
    if fd:
        r = report.row(fd["probe"])
        lines.append(f"  first divergent probe: {r.name} (block {fd.get('block')}, {fd.get('component')}; {fd.get('classification')})")
        lines += _against(report, r)
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

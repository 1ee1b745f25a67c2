"""From per-probe rows to a verdict: where divergence starts, and whether it looks like
a step (a bug at that point) or accumulation (precision loss growing along the model).

The error measure is the normalized RMS error ``nrmse = ||cand - ref|| / ||ref||``, which
is comparable across probes of different scale. A probe is a *step* when its nrmse is at
least ``STEP_FACTOR`` times the largest nrmse seen upstream (floored at the candidate
dtype's rounding unit), or when it turns finite values non-finite.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from parity.report.data import ProbeRow

STEP_FACTOR = 10.0
UNIT_ROUNDOFF = {"float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}


def _floor(dtype: str | None) -> float:
    return UNIT_ROUNDOFF.get(dtype or "float32", 2.0**-24)


def classify(rows: Sequence[ProbeRow], index: int, dtype: str | None) -> tuple[str, float]:
    """('step' | 'accumulation', growth ratio) for the compared row at ``index``."""
    row = rows[index]
    upstream = [r.nrmse for r in rows[:index] if r.compared and r.nrmse is not None and math.isfinite(r.nrmse)]
    base = max([_floor(dtype), *upstream])
    err = row.nrmse if row.nrmse is not None else 0.0
    nonfinite = (row.nan or 0) + (row.inf or 0) > (row.ref_nan or 0) + (row.ref_inf or 0)
    ratio = math.inf if (nonfinite or not math.isfinite(err)) else err / base
    return ("step" if ratio >= STEP_FACTOR else "accumulation"), ratio


def diagnose(rows: Sequence[ProbeRow], dtype: str | None, isolated: Mapping[str, Any] | None = None,
             profiles: Mapping[str, Any] | None = None) -> dict[str, Any]:
    compared = [r for r in rows if r.compared]
    failed = [i for i, r in enumerate(rows) if r.passed is False]
    summary: dict[str, Any] = {
        "verdict": "diverged" if failed else "pass",
        "probes_compared": len(compared),
        "probes_failed": len(failed),
        "probes_not_exposed": sum(1 for r in rows if r.status == "not exposed"),
        "first_divergence": None,
    }
    worst = max(compared, key=lambda r: r.nrmse if r.nrmse is not None else -1.0, default=None)
    summary["largest_error"] = None if worst is None else {"probe": worst.name, "nrmse": worst.nrmse, "max_abs_err": worst.max_abs_err}
    if failed:
        i = failed[0]
        row = rows[i]
        kind, ratio = classify(rows, i, dtype)
        last_ok = next((r.name for r in reversed(rows[:i]) if r.passed), None)
        summary["first_divergence"] = {
            "probe": row.name,
            "block": row.block,
            "component": row.component,
            "classification": kind,
            "growth": ratio,
            "last_matched": last_ok,
            "max_abs_err": row.max_abs_err,
            "atol": row.atol,
            "rtol": row.rtol,
        }
    else:
        summary["classification"] = "accumulation" if worst is not None and (worst.nrmse or 0) > 0 else "exact"
    summary["message"] = message(summary)
    return summary


def _g(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3g}" if isinstance(x, float) else str(x)


def message(summary: dict[str, Any]) -> str:
    fd = summary.get("first_divergence")
    if fd is None:
        le = summary.get("largest_error") or {}
        return (
            f"PASSED | {summary['probes_compared']} probes within tolerance | "
            f"largest error at {le.get('probe', 'n/a')} (nrmse {_g(le.get('nrmse'))}) | {summary.get('classification')}"
        )
    where = f"block {fd['block']}, {fd['component']}" if fd["block"] is not None else fd["component"]
    kind = fd["classification"]
    why = "bug-like step" if kind == "step" else "gradual accumulation (precision)"
    return (
        f"FAILED | {fd['probe']} | max_abs={_g(fd['max_abs_err'])} > atol={_g(fd['atol'])} rtol={_g(fd['rtol'])} | "
        f"{where} | {kind}: {why}, error x{_g(fd['growth'])} over upstream | last matched: {fd['last_matched'] or 'none'}"
    )

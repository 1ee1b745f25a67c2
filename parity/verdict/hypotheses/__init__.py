"""Hypotheses about *why* a probe diverges, tested on the captured tensors.

A hypothesis is a small function registered with :func:`hypothesis` for the canonical points
it can explain (``"attn_out"``, ``"attn.q"``, ``"*"`` for any). It gets the
:class:`~parity.verdict.hypotheses.core.Evidence` of the targeted pass and returns
:class:`~parity.verdict.hypotheses.core.Result` objects (one per variant it tried, each with
its fitted parameters and residual), or nothing when it does not apply (a tensor it needs was
not captured, or its model of the reference does not reproduce the reference).
:func:`evaluate` runs every applicable hypothesis, judges each (see core.judge) and returns
them best first. Users add their own with the same decorator::

    from parity.verdict.hypotheses import hypothesis, Result, residual

    @hypothesis("my-bug", points=["mlp_out"])
    def my_bug(ev):
        pred = ...  # the candidate's output if my bug were there, from ev.ref / ev.weights
        return [Result("my-bug", "custom", {}, residual(ev.out_cand, pred), "my bug")]

``ev.ref``, ``ev.cand`` and ``ev.weights`` come on the run's device in ``ev.work`` (float64;
float32 for a float16/bfloat16 candidate): compute in that dtype. On a GPU, operations a
forward does not run (sorting, argmin...) are better done on the host on a few numbers (see
core: a kernel a process never ran costs up to ~40 ms on its first call).

The built-in families live in generic (scale, per-channel offset, head and channel permutation,
transposed weight), rotary, attention, norm and mlp; load_builtin() registers them (parity.run.targeted
calls it at import, evaluate() on first use). Hypotheses registered with ``generic=True`` are
searches over a space of variants -- identity (is the candidate another tensor the reference
computed?), knobs (the rotary formula, the attention's operands, axis and projection), and the
MLP's and norm's variants -- tried only when no specific hypothesis fits; structure describes
the error when nothing does.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from parity.verdict.hypotheses.core import Evidence, Result, judge, recognise, residual
from parity.verdict.hypotheses.registry import HYPOTHESES, Hypothesis, hypothesis

__all__ = ["HYPOTHESES", "Evidence", "Hypothesis", "Result", "hypothesis", "identity_residual", "recognise",
           "residual", "evaluate"]


def load_builtin() -> None:
    """Register the built-in hypotheses (imports their modules; idempotent)."""
    if "scale" not in HYPOTHESES:
        from parity.verdict.hypotheses import attention, generic, mlp, norm, rotary  # noqa: F401  (register)
        from parity.verdict.hypotheses import identity, knobs  # noqa: F401  (generic explanations)


def identity_residual(ev: Evidence) -> float:
    """What the untransformed reference leaves: the error to explain."""
    return ev.identity


def evaluate(ev: Evidence, names: Sequence[str] | None = None) -> list[Result]:
    """Every applicable hypothesis tried on ``ev``, judged, best first (fitting ones first,
    then by residual). A hypothesis that raises is skipped: it is evidence, never fatal."""
    load_builtin()
    ident = identity_residual(ev)
    out: list[Result] = []
    for generic in (False, True):  # the searches only when no specific hypothesis fits
        if generic and any(r.fits for r in out):
            break
        for h in HYPOTHESES.values():
            if h.generic != generic or (names is not None and h.name not in names) or not h.applies(ev.point):
                continue
            try:
                found = list(h.fn(ev) or ())
            except Exception:  # noqa: BLE001 - a broken hypothesis must not break the diagnosis
                continue
            out.extend(judge(r, ev, ident) for r in found)
    order = {id(r): i for i, r in enumerate(out)}
    out.sort(key=lambda r: (not r.fits, r.residual if math.isfinite(r.residual) else math.inf, order[id(r)]))
    return out


def summary(results: Sequence[Result], ev: Evidence, keep: int = 8) -> dict[str, Any]:
    """``summary.diagnosis`` fields: the winner (or None), the tested list (best first)."""
    winner = next((r for r in results if r.fits), None)
    return {
        "cause_found": winner is not None,
        "winner": None if winner is None else winner.to_dict(),
        "hypotheses": [r.to_dict() for r in results[:keep]],
        "hypotheses_tested": len(results),
        "identity_residual": identity_residual(ev),
        "fit_tolerance": ev.tolerance,
    }

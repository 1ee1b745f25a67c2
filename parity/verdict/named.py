"""The named cause: what the hypotheses of the targeted pass say, folded into
``summary.diagnosis`` -- the winner as the cause in one phrase with its residual and
parameters, the runners-up, and per-token evidence as ranges of matching and non-matching
tokens. When no hypothesis fits, the location-based hint stays, and says so."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from parity.verdict.hypotheses import summary as hyp_summary
from parity.verdict.hypotheses.core import Evidence, Result, sumsq
from parity.verdict.hypotheses.structure import phrase, structure

#: the location category (``diagnosis.cause``) a winning hypothesis stands for
CAUSE_OF = {"norm-eps": "norm-eps", "norm-eps-outside-root": "norm-eps", "activation-wrong-branch": "gating",
            "activation-function": "activation", "softmax-scale": "softmax-scale", "mask-shift": "mask",
            "no-mask": "mask", "low-precision-softmax": "precision", "gqa-tiled": "layout", "permutation": "layout",
            "channel-permutation": "layout", "transposed-weight": "layout", "scale": "scale", "bias": "bias",
            "norm-overflow": "overflow"}
FAMILY_CAUSE = {"rotary": "rotary", "norm": "norm", "attention": "attention", "activation": "activation"}
#: a token is "off" when its own error is over this many times the fit tolerance
TOKEN_FACTOR = 2.0


def token_errors(ref: Any, cand: Any) -> list[float]:
    """Per-token RMS error relative to the reference's RMS token norm."""
    dt = torch.promote_types(ref.dtype, torch.float32)
    r = ref.to(dt).reshape(ref.shape[0], -1)
    c = cand.to(dt).reshape(cand.shape[0], -1)
    per = torch.cat((sumsq(c - r, dim=1), sumsq(r).reshape(1))).tolist()
    scale = math.sqrt(max(per[-1], 0.0)) / math.sqrt(max(r.shape[0], 1)) or 1.0
    return [math.sqrt(max(e, 0.0)) / scale if math.isfinite(e) else math.inf for e in per[:-1]]


def ranges(off: Sequence[bool]) -> list[tuple[int, int, bool]]:
    """Runs of equal flags: (first, last, off)."""
    out: list[tuple[int, int, bool]] = []
    for i, f in enumerate(off):
        if out and out[-1][2] == f:
            out[-1] = (out[-1][0], i, f)
        else:
            out.append((i, i, f))
    return out


def token_line(ev: Evidence, tol: float) -> tuple[str, list[dict[str, Any]]]:
    """'tokens 0-15 match, 16-39 off' for the focus probe (and seq_length when it matters)."""
    errs = token_errors(ev.out_ref, ev.out_cand)
    runs = ranges([e > TOKEN_FACTOR * tol for e in errs])
    parts = []
    for a, b, off in runs:
        span = f"token {a}" if a == b else f"tokens {a}-{b}"
        top = max(errs[a:b + 1])
        parts.append(f"{span} {'off' if off else 'match'} (max {top:.2g})")
    line = f"per token at {ev.probe} (error / RMS token norm, match <= {TOKEN_FACTOR * tol:.2g}): " + ", ".join(parts)
    seq = ev.facts.get("seq_length")
    if seq and len(errs) > seq:
        line += f"; seq_length {seq}: positions 0-{seq - 1} before it, {seq}-{len(errs) - 1} past it"
    return line, [{"first": a, "last": b, "off": off} for a, b, off in runs]


def _params(r: Result) -> str:
    items = []
    for k, v in r.params.items():
        if v is None or isinstance(v, list):
            continue
        items.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
    return ", ".join(items)


def equivalents(results: Sequence[Result], winner: Result | None) -> list[Result]:
    """Other fitting hypotheses as good as the winner (residual within 2x of its): the evidence
    at this probe does not tell them apart (a rotary variant seen only through the attention)."""
    if winner is None:
        return []
    return [r for r in results if r is not winner and r.fits and r.residual <= 2 * winner.residual + 1e-12]


def apply(diag: dict[str, Any], results: Sequence[Result], ev: Evidence, how: str, seconds: dict[str, float]) -> None:
    """Fold the tested hypotheses into ``diag`` (summary.diagnosis), in place."""
    s = hyp_summary(results, ev)
    diag["hypotheses"] = s["hypotheses"]
    diag["targeted"] = {"probe": ev.probe, "mode": how, "probes": sorted(ev.cand), "tested": s["hypotheses_tested"],
                        "identity_residual": s["identity_residual"], "fit_tolerance": s["fit_tolerance"], **seconds}
    ident, tol = s["identity_residual"], s["fit_tolerance"]
    winner = next((r for r in results if r.fits), None)
    # a token is off above the rounding level actually seen here: the winner's residual when one fits
    line, runs = token_line(ev, tol if winner is None else min(tol, max(2 * winner.residual, 1e-12)))
    diag["tokens"] = runs
    evidence = [e for e in diag.get("evidence", []) if not e.startswith("per token:")]
    evidence.append(line)
    same = equivalents(results, winner)
    if same:
        diag["equivalent"] = [r.to_dict() for r in same]
    if winner is not None:
        diag["location_hint"] = diag.get("hint")
        diag["cause"] = CAUSE_OF.get(winner.name, FAMILY_CAUSE.get(winner.family, winner.family))
        diag["named_cause"] = winner.name
        diag["hint"] = f"{winner.cause} -- residual {winner.residual:.2g} vs {ident:.2g} unexplained (rounding level {tol:.2g})"
        if same:
            diag["hint"] += "; indistinguishable here from: " + "; ".join(r.cause for r in same[:2])
        evidence.append(f"hypothesis tested on the full tensors ({how}): {winner.name} ({_params(winner) or 'no parameter'}) "
                        f"fits at {ev.probe}, residual {winner.residual:.2g} <= {tol:.2g}")
    else:
        best = results[0] if results else None
        tried = f"best {best.name} residual {best.residual:.2g}" if best else "none applied"
        diag["named_cause"] = None
        names = list(dict.fromkeys(r.name for r in results))
        ruled = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        shape = structure(ev)
        diag["error_structure"] = shape
        diag["hint"] = (f"no tested hypothesis reproduces the candidate at {ev.probe} ({len(results)} tried, {tried}, "
                        f"rounding level {tol:.2g}); the error: {phrase(shape)}; by location: {diag.get('hint')}")
        if names:
            evidence.append(f"ruled out at {ev.probe} (none within rounding): {ruled}")
    runners = [r for r in results if r is not winner][:3]
    if runners:
        evidence.append("runners-up: " + ", ".join(f"{r.name} ({_params(r) or 'no parameter'}) residual {r.residual:.2g}"
                                                    for r in runners))
    diag["evidence"] = evidence

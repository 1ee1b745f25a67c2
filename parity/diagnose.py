"""From per-probe rows to a verdict: where divergence starts, and whether it looks like
a step (a bug at that point) or accumulation (precision loss growing along the model),
and -- :func:`explain` -- which known porting bug the evidence points at.

The error measure is the normalized RMS error ``nrmse = ||cand - ref|| / ||ref||``, which
is comparable across probes of different scale. A probe is a *step* when its nrmse is at
least ``STEP_FACTOR`` times the largest nrmse seen upstream (floored at the candidate
dtype's rounding unit), or when it turns finite values non-finite.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from parity import probes as canon
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
             profiles: Mapping[str, Any] | None = None, isolated_profiles: Mapping[str, Any] | None = None) -> dict[str, Any]:
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
    diag = explain(rows, summary, dtype, isolated or {}, profiles or {}, isolated_profiles or {})
    if diag is not None:
        summary["diagnosis"] = diag
    return summary


def _g(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3g}" if isinstance(x, float) else str(x)


def message(summary: dict[str, Any]) -> str:
    fd = summary.get("first_divergence")
    if fd is None:
        le = summary.get("largest_error") or {}
        if summary.get("classification") == "exact":
            return f"PASSED | {summary['probes_compared']} probes within tolerance | all identical to the reference | exact"
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


# --------------------------------------------------------------------------- explanation
# The probe whose match shows a component's input was right, per point.
FP16_MAX = 65504.0


def _input_of(name: str, num_blocks_seen: set[int]) -> str | None:
    p = canon.parse(name)
    b = p.block
    if b is None:
        return {"final_norm": _prev_stream(max(num_blocks_seen) + 1 if num_blocks_seen else 0), "logits": "final_norm"}.get(p.point)
    prefix = f"blocks.{b}."
    return {
        "attn_in": _prev_stream(b),
        "attn.q": prefix + "attn_in", "attn.k": prefix + "attn_in", "attn.v": prefix + "attn_in",
        "attn.q_rot": prefix + "attn.q", "attn.k_rot": prefix + "attn.k",
        "attn_out": prefix + "attn_in",
        "resid_mid": prefix + "attn_out",
        "mlp_in": prefix + "resid_mid",
        "mlp_out": prefix + "mlp_in",
        "resid_post": prefix + "mlp_out",
    }.get(p.point)


def _prev_stream(block: int) -> str:
    return "embed" if block == 0 else f"blocks.{block - 1}.resid_post"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def _state(row: ProbeRow | None, name: str) -> str:
    if row is None or not row.compared:
        return f"{name} not exposed"
    word = "matched" if row.passed else "off"
    extra = "" if row.passed else f", cosine {row.cosine:.6f}" if row.cosine is not None else ""
    return f"{name} {word} (max abs {_fmt(row.max_abs_err)}{extra})"


def _token_split(prof: Any, row: ProbeRow) -> bool:
    """True when token 0 is fine and later tokens are off (position-dependent error)."""
    if prof is None or prof.later_tokens_err is None:
        return False
    tol = (row.atol or 0.0) + (row.rtol or 0.0)
    return prof.first_token_err <= tol and prof.later_tokens_err > 4 * max(prof.first_token_err, 1e-12)


def _per_scale(prof: Any, row: ProbeRow) -> bool:
    """True when one scalar per token explains the error (norm epsilon signature)."""
    return prof is not None and row.nrmse is not None and math.isfinite(row.nrmse) and prof.scale_fit_nrmse < 0.1 * row.nrmse


def _signature(row: ProbeRow, by_name: dict[str, ProbeRow], prof: Any, dtype: str | None) -> tuple[str, str]:
    """(cause, hint) for the first diverging probe."""
    point = canon.parse(row.name).point
    nonfinite = (row.nan or 0) + (row.inf or 0) > (row.ref_nan or 0) + (row.ref_inf or 0)
    if nonfinite:
        ref_max = row.ref_abs_max or 0.0
        if ref_max > FP16_MAX and (dtype or "").startswith("float16"):
            return "overflow", (
                f"dtype range: {row.name} reaches |x| = {ref_max:.3g} in the float32 reference, beyond float16's "
                f"max {FP16_MAX:g} -- outlier channel {row.worst_channel} (first at token {row.worst_token}); run this "
                "layer (or the residual stream) in float32/bfloat16, or rescale the outlier channel")
        return "overflow", (f"non-finite values appear in the candidate at {row.name} while the reference is finite "
                            f"(channel {row.worst_channel}, token {row.worst_token}): overflow or division by zero")
    if point in ("rope.cos", "rope.sin"):
        return "rotary", ("rotary: the cos/sin tables differ from the reference (position 0 always matches): wrong "
                          "rotary base (theta), rotary dim, or NTK/scaling of the table")
    if point in ("attn.q_rot", "attn.k_rot"):
        return "rotary", ("rotary: q/k match before rotary but not after -- rotary applied twice (the attention "
                          "kernel's own rotary on top of the model's), a wrong table or base, or interleaved vs "
                          "rotate-half layout")
    if point in ("attn.q", "attn.k", "attn.v"):
        return "layout", ("layout: q/k/v differ right after the fused QKV projection while attn_in matched -- the "
                          "fused weight is concatenated or split in the wrong order (q|k|v vs per-head/grouped "
                          "interleave) or viewed with the wrong head layout")
    if point == "attn_out":
        if _token_split(prof, row):
            return "position", ("position handling: attention is right at token 0 and wrong at later positions while "
                                "its input matches -- rotary applied twice (e.g. the attention plugin's own rotary on "
                                "top of the model's: set rotary_embedding_dim=0 on the plugin), wrong position ids or "
                                "rotary base, or a wrong causal mask")
        return "attention", ("attention kernel: output off while its input matches -- softmax scale, mask, GQA head "
                             "mapping, rotary, or the output projection")
    if point == "mlp_out":
        return "gating", ("activation/gating: MLP output off while mlp_in matched -- the activation on the wrong "
                          "branch of the gated MLP (Qwen v1: c_proj(w1(x) * silu(w2(x))), SiLU on w2; LLaMA: "
                          "silu(gate) * up), a wrong activation, or swapped gate/up (w1/w2) weights")
    if point in ("attn_in", "mlp_in", "final_norm"):
        if _per_scale(prof, row):
            return "norm-eps", (f"norm epsilon: the norm output is the reference rescaled per token (scale "
                                f"{prof.token_scale_min:.4g}..{prof.token_scale_max:.4g}) while its input matches -- "
                                "error proportional to the values; check rms_norm_eps / layer_norm_epsilon and "
                                "whether eps is added inside the root")
        return "norm", "norm: output off while its input matches -- norm weights, norm type (RMSNorm vs LayerNorm), or a +1 weight offset"
    if point in ("resid_mid", "resid_post"):
        return "residual", "residual add: the stream differs while the added output matches -- residual wiring (added to the normed input, dropped, or added twice)"
    if point == "embed":
        return "embedding", "embedding: the embedding output differs -- embedding weights, token ids, vocab padding or an embedding scale"
    return "lm-head", "LM head: logits off while final_norm matches -- tied vs untied weights, vocab padding or logit scaling"


def _own_error(d: Any, dtype: str | None) -> bool:
    """An isolated diff that is a block's own bug: over tolerance *and* a step above the
    dtype's rounding unit (or non-finite), so that fp16 rounding under tight tolerances is not."""
    if d.passed:
        return False
    return d.n_nonfinite_mismatch > 0 or not math.isfinite(d.nrmse) or d.nrmse >= STEP_FACTOR * _floor(dtype)


def _isolation_evidence(rows: Sequence[ProbeRow], isolated: Mapping[str, Any], block: int | None,
                        dtype: str | None) -> tuple[int | None, list[str]]:
    """(first block whose own isolated error jumps, evidence lines)."""
    per_block: dict[int, list[tuple[str, Any]]] = {}
    for name, d in isolated.items():
        b = canon.parse(name).block
        if b is not None:
            per_block.setdefault(b, []).append((name, d))
    if not per_block:
        return None, []
    failing = sorted(b for b, ds in per_block.items() if any(_own_error(d, dtype) for _, d in ds))
    culprit = failing[0] if failing else None
    lines = []
    shown = culprit if culprit is not None else block
    if shown is not None and shown in per_block:
        parts = [f"{n.split('.', 2)[2]} {_fmt(d.max_abs_err)}" for n, d in sorted(per_block[shown], key=lambda x: canon.order_key(x[0]))
                 if n.split(".", 2)[2] in ("attn_out", "mlp_out", "resid_post")]
        lines.append(f"isolated (teacher-forced) error of block {shown}: " + ", ".join(parts))
    if culprit is not None:
        before = [b for b in per_block if b < culprit]
        if before:
            span = f"block {before[0]} is" if len(before) == 1 else f"blocks {min(before)}..{max(before)} are"
            lines.append(f"{span} fine in isolation; block {culprit} is the first whose own error jumps")
        accumulated = {r.block for r in rows if r.block is not None and r.passed is False}
        inherited = sorted(b for b in per_block if b > culprit and b not in failing and b in accumulated)
        if inherited:
            which = f"block {inherited[0]} is" if len(inherited) == 1 else "blocks " + ", ".join(map(str, inherited)) + " are"
            lines.append(f"{which} fine in isolation but off in the full run: inherited error")
    else:
        lines.append("no block's isolated error is more than rounding: the error is inherited and grows (accumulation)")
    return culprit, lines


def _jump(d: Any, dtype: str | None) -> bool:
    """An isolated diff far above the dtype's rounding (even if within tolerance)."""
    return d.n_nonfinite_mismatch > 0 or not math.isfinite(d.nrmse) or d.nrmse >= STEP_FACTOR * _floor(dtype)


def _focus(rows: Sequence[ProbeRow], fd: dict[str, Any], culprit: int | None, isolated: Mapping[str, Any],
           dtype: str | None) -> str:
    """The probe to explain: the first divergence, unless isolation shows the bug elsewhere
    (in another block, or hidden under tolerance ahead of an 'accumulation' first divergence):
    then the first probe of the culprit block whose own (isolated) error jumps."""
    upstream = fd["block"] == culprit or fd["probe"] in canon.HEAD_PROBES  # embed / rope tables
    if culprit is None or (fd["classification"] == "step" and upstream):
        return fd["probe"]
    block_rows = [r.name for r in rows if r.block == culprit]
    for name in block_rows:
        if name in isolated and _jump(isolated[name], dtype):
            return name
    return next((n for n in block_rows if n in isolated and not isolated[n].passed), fd["probe"])


def explain(rows: Sequence[ProbeRow], summary: dict[str, Any], dtype: str | None,
            isolated: Mapping[str, Any], profiles: Mapping[str, Any],
            isolated_profiles: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """``summary.diagnosis``: {block, component, cause, kind, hint, evidence} for a divergence."""
    fd = summary.get("first_divergence")
    if fd is None:
        return None
    by_name = {r.name: r for r in rows}
    first = by_name[fd["probe"]]
    culprit, iso_lines = _isolation_evidence(rows, isolated, first.block, dtype)
    if fd["classification"] == "accumulation" and culprit is None:
        return {"block": first.block, "component": first.component, "cause": "accumulation", "kind": "accumulation",
                "hint": (f"precision accumulation: no step at one point -- the error grows gradually along the model "
                         f"({dtype or 'candidate dtype'}); loosen the tolerances or keep sensitive ops (norms, softmax, "
                         "residual stream) in float32"),
                "evidence": [_state(first, first.name)] + iso_lines}
    name = _focus(rows, fd, culprit, isolated, dtype)
    row = by_name[name]
    moved = name != fd["probe"]
    prof = (isolated_profiles or {}).get(name) if moved else profiles.get(name)
    if moved and name in isolated:  # judge the probe by its own (teacher-forced) error
        row = dataclasses.replace(row, nrmse=isolated[name].nrmse, max_abs_err=isolated[name].max_abs_err,
                                  passed=isolated[name].passed)
    cause, hint = _signature(row, by_name, prof, dtype)
    evidence = []
    if moved:
        evidence.append(f"first over tolerance: {fd['probe']} ({fd['classification']}); but isolation shows block "
                        f"{culprit}'s own error starts at {name} (isolated nrmse {_fmt(row.nrmse)}, "
                        f"{_fmt(row.nrmse / _floor(dtype))} x the {dtype} rounding unit)")
    blocks_seen = {r.block for r in rows if r.block is not None}
    src = _input_of(name, blocks_seen)
    if src is not None:
        evidence.append(_state(by_name.get(src), src))
    if src is not None and name.endswith("attn_out"):
        for extra in (name.replace("attn_out", "attn.q"), name.replace("attn_out", "attn.q_rot")):
            if extra in by_name and by_name[extra].compared:
                evidence.append(_state(by_name[extra], extra))
    if moved and row.passed:
        evidence.append(f"{name} within tolerance in isolation (max abs {_fmt(row.max_abs_err)}) but far above rounding: nrmse {_fmt(row.nrmse)}")
    else:
        evidence.append(_state(row, name) + (f", nrmse {_fmt(row.nrmse)}" if row.nrmse is not None else ""))
    if prof is not None and prof.later_tokens_err is not None:
        evidence.append(f"per token: token 0 max abs {_fmt(prof.first_token_err)}, tokens 1.. max abs {_fmt(prof.later_tokens_err)}")
    if cause == "norm-eps" and prof is not None:
        evidence.append(f"a per-token scale explains the error: nrmse {_fmt(row.nrmse)} -> {_fmt(prof.scale_fit_nrmse)} after fitting one scale per token")
    if cause == "overflow":
        evidence.append(f"reference max |x| {_fmt(row.ref_abs_max)} = {_fmt(row.fp16_headroom)} x float16 max; candidate has {row.inf or 0} inf, {row.nan or 0} nan")
    evidence.extend(iso_lines)
    return {"block": row.block, "component": row.component, "cause": cause, "kind": "bug", "hint": hint,
            "evidence": evidence, "probe": name}

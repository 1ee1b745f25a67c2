"""From per-probe rows to a verdict: where divergence starts, and whether it looks like
a step (a bug at that point) or accumulation (precision loss growing along the model),
and -- :func:`explain` -- which known porting bug the evidence points at.

Calibrated runs (the default, see parity.verdict.calibrate) measure each probe by its *excess*:
its error over the precision twin's, so inherited rounding keeps a probe near 1 however
deep it is. A first failing probe is a *step* when its excess is at least
``calibrate.STEP_GROWTH`` times the largest excess upstream (at least 1); otherwise the
candidate loses precision faster than an honest run all along (accumulation).

Absolute runs measure the normalized RMS error ``nrmse = ||cand - ref|| / ||ref||``,
comparable across probes of different scale: a step is an nrmse at least ``STEP_FACTOR``
times the largest upstream (floored at the candidate dtype's rounding unit).

Either way a probe that turns finite values non-finite is a step.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from parity.capture import probes as canon
from parity.dtypes import FP16_MAX
from parity.verdict.calibrate import STEP_GROWTH, UNIT_ROUNDOFF, Calibration
from parity.report.data import ProbeRow
from parity.summary import Diagnosis, FirstDivergence, LargestError, LargestExcess, Summary

STEP_FACTOR = 10.0


def _floor(dtype: str | None) -> float:
    return UNIT_ROUNDOFF.get(dtype or "float32", 2.0**-24)


def _nonfinite(row: ProbeRow) -> bool:
    return (row.nan or 0) + (row.inf or 0) > (row.ref_nan or 0) + (row.ref_inf or 0)


def classify(rows: Sequence[ProbeRow], index: int, dtype: str | None,
             calibration: Calibration | None = None) -> tuple[str, float]:
    """('step' | 'accumulation', growth ratio) for the compared row at ``index``: its error
    measure (excess in calibrated runs, nrmse otherwise) over the largest upstream."""
    row = rows[index]
    calibrated = calibration is not None and calibration.calibrated and row.excess is not None
    measure = (lambda r: r.excess) if calibrated else (lambda r: r.nrmse)
    upstream = [measure(r) for r in rows[:index] if r.compared and measure(r) is not None and math.isfinite(measure(r))]
    base = max([1.0 if calibrated else _floor(dtype), *upstream])
    err = measure(row) if measure(row) is not None else 0.0
    ratio = math.inf if (_nonfinite(row) or not math.isfinite(err)) else err / base
    return ("step" if ratio >= (STEP_GROWTH if calibrated else STEP_FACTOR) else "accumulation"), ratio


def birth(rows: Sequence[ProbeRow], index: int, dtype: str | None, calibration: Calibration | None = None) -> int | None:
    """The earliest probe up to ``index`` whose own input matched and whose error is a step
    over it (an error born in a norm is not accumulation even when it stays under the
    budget until probes downstream): its measure at least the honest rounding level (excess
    1; absolute: STEP_FACTOR rounding units) and STEP_GROWTH (STEP_FACTOR) times its input's."""
    calibrated = calibration is not None and calibration.calibrated
    by_name = {r.name: r for r in rows}
    blocks = {r.block for r in rows if r.block is not None}
    for i, row in enumerate(rows[:index + 1]):
        src = by_name.get(_input_of(row.name, blocks) or "")
        if not row.compared or src is None or not src.compared:
            continue
        m, m_in = (row.excess, src.excess) if calibrated else (row.nrmse, src.nrmse)
        if m is None or m_in is None or not math.isfinite(m):
            continue
        level = 1.0 if calibrated else STEP_FACTOR * _floor(dtype)
        if m >= level and m >= (STEP_GROWTH if calibrated else STEP_FACTOR) * m_in:
            return i
    return None


def diagnose(rows: Sequence[ProbeRow], dtype: str | None, isolated: Mapping[str, Any] | None = None,
             profiles: Mapping[str, Any] | None = None, isolated_profiles: Mapping[str, Any] | None = None,
             calibration: Calibration | None = None) -> Summary:
    calib = calibration or Calibration("absolute")
    compared = [r for r in rows if r.compared]
    failed = [i for i, r in enumerate(rows) if r.passed is False]
    worst = max(compared, key=lambda r: r.nrmse if r.nrmse is not None else -1.0, default=None)
    summary = Summary(
        verdict="diverged" if failed else "pass", probes_compared=len(compared), probes_failed=len(failed),
        probes_not_exposed=sum(1 for r in rows if r.status == "not exposed"),
        largest_error=None if worst is None else LargestError(worst.name, worst.nrmse, worst.max_abs_err),
        tolerance="calibrated" if calib.calibrated else "absolute")
    if calib.calibrated:
        summary.budget, summary.floor = calib.budget, calib.floor
        top = max((r for r in compared if r.excess is not None), key=lambda r: r.excess, default=None)
        summary.largest_excess = None if top is None else LargestExcess(top.name, top.excess)
    if failed:
        summary.first_divergence = _first_divergence(rows, failed[0], dtype, calib)
    else:
        summary.classification = "accumulation" if worst is not None and (worst.nrmse or 0) > 0 else "exact"
    summary.message = message(summary)
    diag = explain(rows, summary, dtype, isolated or {}, profiles or {}, isolated_profiles or {}, calib)
    if diag is not None:
        summary.diagnosis = diag if isinstance(diag, Diagnosis) else Diagnosis.from_dict(diag)
    return summary


def _first_divergence(rows: Sequence[ProbeRow], i: int, dtype: str | None, calib: Calibration) -> FirstDivergence:
    row = rows[i]
    kind, ratio = classify(rows, i, dtype, calib)
    born = birth(rows, i, dtype, calib) if kind == "accumulation" else None
    if born is not None and born < i:
        kind = "step"
    last_ok = next((r.name for r in reversed(rows[:i]) if r.passed), None)
    return FirstDivergence(
        probe=row.name, block=row.block, component=row.component, classification=kind, growth=ratio,
        last_matched=last_ok, max_abs_err=row.max_abs_err, nrmse=row.nrmse, atol=row.atol, rtol=row.rtol,
        excess=row.excess, twin_nrmse=row.twin_nrmse, twin_max_abs_err=row.twin_max_abs_err,
        born_at=rows[born].name if born is not None and born < i else None)


def _g(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3g}" if isinstance(x, float) else str(x)


def _x(x: Any) -> str:
    """An excess ratio: x1.3, x101, x2.4e+03."""
    if x is None:
        return "n/a"
    if not math.isfinite(x):
        return "xinf"
    return f"x{x:.2g}" if x < 10 else f"x{x:.0f}" if x < 1e4 else f"x{x:.2g}"


def message(summary: Summary) -> str:
    fd = summary.get("first_divergence")
    calibrated = summary.get("tolerance") == "calibrated"
    if fd is None:
        le = summary.get("largest_error") or {}
        within = f"within {_x(summary.get('budget'))} of the precision twin" if calibrated else "within tolerance"
        if summary.get("classification") == "exact":
            return f"PASSED | {summary['probes_compared']} probes {within} | all identical to the reference | exact"
        top = (summary.get("largest_excess") or {}) if calibrated else {}
        excess = f" | largest excess {_x(top.get('excess'))} at {top.get('probe')}" if top else ""
        return (
            f"PASSED | {summary['probes_compared']} probes {within}{excess} | "
            f"largest error at {le.get('probe', 'n/a')} (nrmse {_g(le.get('nrmse'))}) | {summary.get('classification')}"
        )
    where = f"block {fd['block']}, {fd['component']}" if fd["block"] is not None else fd["component"]
    kind = fd["classification"]
    why = "bug-like step" if kind == "step" else "gradual accumulation (precision)"
    if calibrated:
        if fd["twin_nrmse"] is None:  # float32: the twin is the reference itself
            against = f"nrmse {_g(fd['nrmse'])}, max_abs {_g(fd['max_abs_err'])}; float32 floor {_g(summary.get('floor'))}"
        else:
            against = (f"nrmse {_g(fd['nrmse'])} vs twin {_g(fd['twin_nrmse'])}, max_abs {_g(fd['max_abs_err'])} vs twin "
                       f"{_g(fd['twin_max_abs_err'])}")
        what = f"excess {_x(fd['excess'])} > budget {_x(summary.get('budget'))} ({against})"
        growth = f"excess {_x(fd['growth'])} over upstream"
    else:
        what = f"max_abs={_g(fd['max_abs_err'])} > atol={_g(fd['atol'])} rtol={_g(fd['rtol'])}"
        growth = f"error x{_g(fd['growth'])} over upstream"
    if fd.get("born_at"):
        growth = f"born at {fd['born_at']} (its input matched; error there a step over it)"
    return f"FAILED | {fd['probe']} | {what} | {where} | {kind}: {why}, {growth} | last matched: {fd['last_matched'] or 'none'}"


# --------------------------------------------------------------------------- explanation


def _input_of(name: str, num_blocks_seen: set[int]) -> str | None:
    return canon.input_of(name, max(num_blocks_seen) + 1 if num_blocks_seen else 0)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def _state(row: ProbeRow | None, name: str) -> str:
    if row is None or not row.compared:
        return f"{name} not exposed"
    word = "matched" if row.passed else "off"
    extra = "" if row.passed else f", cosine {row.cosine:.6f}" if row.cosine is not None else ""
    if row.excess is not None:
        extra += f", excess {_x(row.excess)}"
    return f"{name} {word} (max abs {_fmt(row.max_abs_err)}{extra})"


def _token_split(prof: Any, row: ProbeRow) -> bool:
    """True when token 0 is fine and later tokens are off (position-dependent error)."""
    if prof is None or prof.later_tokens_err is None:
        return False
    if row.excess is not None:  # calibrated: token 0 within the twin's worst error allowance
        tol = (row.twin_max_abs_err or 0.0) + (row.max_abs_err or 0.0) / max(row.excess, 1.0)
    else:
        tol = (row.atol or 0.0) + (row.rtol or 0.0)
    return prof.first_token_err <= tol and prof.later_tokens_err > 4 * max(prof.first_token_err, 1e-12)


def _per_scale(prof: Any, row: ProbeRow) -> bool:
    """True when one scalar per token explains the error (norm epsilon signature)."""
    return prof is not None and row.nrmse is not None and math.isfinite(row.nrmse) and prof.scale_fit_nrmse < 0.1 * row.nrmse


def _span(lo: float, hi: float) -> str:
    """A range of per-token scales, with the digits that tell its ends apart (never "1..1")."""
    for digits in (4, 6, 8):
        a, b = f"{lo:.{digits}g}", f"{hi:.{digits}g}"
        if a != b:
            return f"{a}..{b}"
    return f"{lo:.4g} on every token"


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
        return "rotary", ("rotary: the cos/sin tables differ from the reference: wrong position ids, rotary base "
                          "(theta), rotary dim, or NTK/scaling of the table")
    if point in ("attn.q_rot", "attn.k_rot"):
        return "rotary", ("rotary: q/k match before rotary but not after -- rotary applied twice (the attention "
                          "kernel's own rotary on top of the model's), a wrong table or base, or interleaved vs "
                          "rotate-half layout")
    if point in ("attn.q", "attn.k", "attn.v"):
        return "layout", ("layout: q/k/v differ right after their projection while attn_in matched -- projection "
                          "weights or bias, a fused QKV weight concatenated or split in the wrong order (q|k|v vs "
                          "per-head/grouped interleave), or the wrong head layout")
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
                                f"{_span(prof.token_scale_min, prof.token_scale_max)}) while its input matches -- "
                                "error proportional to the values; check rms_norm_eps / layer_norm_epsilon and "
                                "whether eps is added inside the root")
        return "norm", "norm: output off while its input matches -- norm weights, norm type (RMSNorm vs LayerNorm), or a +1 weight offset"
    if point in ("resid_mid", "resid_post"):
        return "residual", "residual add: the stream differs while the added output matches -- residual wiring (added to the normed input, dropped, or added twice)"
    if point == "embed":
        return "embedding", "embedding: the embedding output differs -- embedding weights, token ids, vocab padding or an embedding scale"
    return "lm-head", "LM head: logits off while final_norm matches -- tied vs untied weights, vocab padding or logit scaling"


class _Judge:
    """Whether a block's isolated (teacher-forced) error is its own bug, and how it reads."""

    def __init__(self, calib: Calibration, dtype: str | None, rows: Sequence[ProbeRow]) -> None:
        self.calib, self.dtype = calib, dtype
        self.ref_abs_max = {r.name: r.ref_abs_max for r in rows}

    def excess(self, name: str, d: Any) -> float | None:
        x = self.calib.excess(name, d, self.ref_abs_max.get(name), isolated=True)
        return None if x is None else x.value

    def own_error(self, name: str, d: Any) -> bool:
        """Calibrated: over the budget against the twin's isolated error (or non-finite).
        Absolute: over tolerance *and* a step above the dtype's rounding unit (or
        non-finite), so that fp16 rounding under tight tolerances is not."""
        if d.n_nonfinite_mismatch > 0 or not math.isfinite(d.nrmse):
            return True
        if self.calib.calibrated:
            return not self.calib.judge(name, d, self.ref_abs_max.get(name), isolated=True)
        return not d.passed and d.nrmse >= STEP_FACTOR * _floor(self.dtype)

    def jump(self, name: str, d: Any) -> bool:
        """An isolated error far above honest rounding (even if within an absolute tolerance)."""
        if self.calib.calibrated:
            return self.own_error(name, d)
        return d.n_nonfinite_mismatch > 0 or not math.isfinite(d.nrmse) or d.nrmse >= STEP_FACTOR * _floor(self.dtype)

    def size(self, name: str, d: Any) -> str:
        """How big an isolated error is, for the evidence lines."""
        x = self.excess(name, d)
        if x is not None:
            return f"excess {_x(x)} (nrmse {_fmt(d.nrmse)})"
        return f"nrmse {_fmt(d.nrmse)}, {_fmt(d.nrmse / _floor(self.dtype))} x the {self.dtype} rounding unit"

    def cell(self, name: str, d: Any) -> str:
        x = self.excess(name, d)
        return _fmt(d.max_abs_err) + ("" if x is None else f" ({_x(x)})")


#: calibrated runs: when most blocks are over the budget on their own, each by no more than
#: this excess (a few bits of precision, not a changed function), the candidate is less
#: precise than its dtype throughout -- not one culprit block
SYSTEMIC_MAX_EXCESS = 64.0


def _systemic(per_block: Mapping[int, list[tuple[str, Any]]], failing: list[int], judge: _Judge) -> bool:
    if not judge.calib.calibrated or len(failing) < max(2, len(per_block) / 2):
        return False
    worst = [judge.excess(n, d) for b in failing for n, d in per_block[b]]
    return all(x is not None and x <= SYSTEMIC_MAX_EXCESS for x in worst)


def _isolation_evidence(rows: Sequence[ProbeRow], isolated: Mapping[str, Any], block: int | None,
                        judge: _Judge, accumulating: bool) -> tuple[int | None, list[str], bool]:
    """(first block whose own isolated error jumps, evidence lines, systemic). When the full
    run looks like accumulation, own errors over the budget in most blocks are a candidate
    less precise than an honest run throughout (systemic, see _systemic), not one culprit.
    (After a step they may as well be one bug repeated in every block: that stays a bug.)"""
    per_block: dict[int, list[tuple[str, Any]]] = {}
    for name, d in isolated.items():
        b = canon.parse(name).block
        if b is not None:
            per_block.setdefault(b, []).append((name, d))
    if not per_block:
        return None, [], False
    failing = sorted(b for b, ds in per_block.items() if any(judge.own_error(n, d) for n, d in ds))
    if accumulating and _systemic(per_block, failing, judge):
        top = max(x for b in failing for n, d in per_block[b] if (x := judge.excess(n, d)) is not None)
        return None, [f"{len(failing)} of {len(per_block)} blocks are over {_x(judge.calib.budget)} the twin's error on "
                      f"their own (teacher-forced), none beyond {_x(top)}: the candidate computes with less precision "
                      f"than an honest {judge.dtype} run throughout, not one bug at one place"], True
    culprit = failing[0] if failing else None
    lines = []
    shown = culprit if culprit is not None else block
    if shown is not None and shown in per_block:
        parts = [f"{n.split('.', 2)[2]} {judge.cell(n, d)}" for n, d in sorted(per_block[shown], key=lambda x: canon.order_key(x[0]))
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
    elif judge.calib.calibrated:
        lines.append(f"no block's isolated error is over {_x(judge.calib.budget)} the twin's: each block alone is as "
                     "precise as an honest run; the excess builds up along the model (accumulation)")
    else:
        lines.append("no block's isolated error is more than rounding: the error is inherited and grows (accumulation)")
    return culprit, lines, False


def _focus(rows: Sequence[ProbeRow], fd: dict[str, Any], culprit: int | None, isolated: Mapping[str, Any],
           judge: _Judge) -> str:
    """The probe to explain: the first divergence, unless isolation shows the bug elsewhere
    (in another block, or hidden under tolerance ahead of an 'accumulation' first divergence):
    then the first probe of the culprit block whose own (isolated) error jumps."""
    if fd.get("born_at"):
        return fd["born_at"]
    upstream = fd["block"] == culprit or fd["probe"] in canon.HEAD_PROBES  # embed / rope tables
    if culprit is None or (fd["classification"] == "step" and upstream):
        return fd["probe"]
    block_rows = [r.name for r in rows if r.block == culprit]
    for name in block_rows:
        if name in isolated and judge.jump(name, isolated[name]):
            return name
    return next((n for n in block_rows if n in isolated and judge.own_error(n, isolated[n])), fd["probe"])


def _accumulation_hint(first: ProbeRow, rows: Sequence[ProbeRow], dtype: str | None, calib: Calibration) -> str:
    what = dtype or "candidate dtype"
    if not calib.calibrated:
        return (f"precision accumulation: no step at one point -- the error grows gradually along the model "
                f"({what}); loosen the tolerances or keep sensitive ops (norms, softmax, residual stream) in float32")
    upstream = [r.excess for r in rows if r.compared and r.excess is not None and math.isfinite(r.excess)
                and canon.order_key(r.name) < canon.order_key(first.name)]
    start = min(upstream) if upstream else None
    return (f"precision accumulation: the candidate loses precision faster than an honest {what} run of the "
            f"reference (excess {_x(start)} upstream, {_x(first.excess)} at {first.name}), with no single bug -- its "
            "kernels are less precise than eager math in this dtype: float16 accumulation in matmuls, softmax or "
            "norms computed in the low precision, a residual stream kept in the low precision; keep those in float32, "
            "or raise --budget if this loss is accepted")


def explain(rows: Sequence[ProbeRow], summary: Summary, dtype: str | None,
            isolated: Mapping[str, Any], profiles: Mapping[str, Any],
            isolated_profiles: Mapping[str, Any] | None = None,
            calibration: Calibration | None = None) -> dict[str, Any] | None:
    """``summary.diagnosis``: {block, component, cause, kind, hint, evidence} for a divergence."""
    fd = summary.get("first_divergence")
    if fd is None:
        return None
    calib = calibration or Calibration("absolute")
    judge = _Judge(calib, dtype, rows)
    by_name = {r.name: r for r in rows}
    first = by_name[fd["probe"]]
    culprit, iso_lines, systemic = _isolation_evidence(rows, isolated, first.block, judge,
                                                       fd["classification"] == "accumulation")
    if fd["classification"] == "accumulation" and (systemic or culprit is None):
        return {"block": first.block, "component": first.component, "cause": "accumulation", "kind": "accumulation",
                "hint": _accumulation_hint(first, rows, dtype, calib),
                "evidence": [_state(first, first.name)] + iso_lines}
    name = _focus(rows, fd, culprit, isolated, judge)
    row = by_name[name]
    born = name == fd.get("born_at")
    moved = name != fd["probe"] and not born
    prof = (isolated_profiles or {}).get(name) if moved else profiles.get(name)
    if moved and name in isolated:  # judge the probe by its own (teacher-forced) error
        d = isolated[name]
        row = dataclasses.replace(row, nrmse=d.nrmse, max_abs_err=d.max_abs_err, passed=not judge.own_error(name, d),
                                  excess=judge.excess(name, d))
    cause, hint = _signature(row, by_name, prof, dtype)
    evidence = []
    if born:
        evidence.append(f"first over {'budget' if calib.calibrated else 'tolerance'}: {fd['probe']}; the error is born "
                        f"earlier, at {name}, a step over its matching input (judged there, not as accumulation)")
    if moved:
        evidence.append(f"first over {'budget' if calib.calibrated else 'tolerance'}: {fd['probe']} "
                        f"({fd['classification']}); but isolation shows block {culprit}'s own error starts at {name} "
                        f"(isolated {judge.size(name, isolated[name])})")
    blocks_seen = {r.block for r in rows if r.block is not None}
    src = _input_of(name, blocks_seen)
    if src is not None:
        evidence.append(_state(by_name.get(src), src))
    if src is not None and name.endswith("attn_out"):
        for extra in (name.replace("attn_out", "attn.q"), name.replace("attn_out", "attn.q_rot")):
            if extra in by_name and by_name[extra].compared:
                evidence.append(_state(by_name[extra], extra))
    if moved and row.passed:
        evidence.append(f"{name} within {'budget' if calib.calibrated else 'tolerance'} in isolation (max abs "
                        f"{_fmt(row.max_abs_err)}) but far above rounding: nrmse {_fmt(row.nrmse)}")
    else:
        evidence.append(_state(row, name) + (f", nrmse {_fmt(row.nrmse)}" if row.nrmse is not None else ""))
    if prof is not None and prof.later_tokens_err is not None:
        evidence.append(f"per token: token 0 max abs {_fmt(prof.first_token_err)}, tokens 1.. max abs {_fmt(prof.later_tokens_err)}")
    if cause == "norm-eps" and prof is not None:
        evidence.append(f"a per-token scale explains the error: nrmse {_fmt(row.nrmse)} -> {_fmt(prof.scale_fit_nrmse)} after fitting one scale per token")
    if cause == "overflow":
        evidence.append(f"reference max |x| {_fmt(row.ref_abs_max)} = {_fmt(row.fp16_headroom)} x float16 max; candidate has {row.inf or 0} inf, {row.nan or 0} nan")
        twin = calib.twin.diffs.get(name) if calib.twin is not None else None
        if twin is not None and twin.n_nonfinite_mismatch:
            evidence.append(f"the precision twin (the reference itself in {dtype}) overflows here too: the model does not "
                            f"fit {dtype}, whatever the engine does")
    evidence.extend(iso_lines)
    return {"block": row.block, "component": row.component, "cause": cause, "kind": "bug", "hint": hint,
            "evidence": evidence, "probe": name}

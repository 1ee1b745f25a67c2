"""Quantized candidates: their verdict, per-layer attribution and the sensitivity sweep.

* **Verdict.** Against the fp16/bf16 precision twin a quantized candidate's excess is large
  by design (int4 weights are not fp16 rounding), so the per-probe excess is reported as
  attribution and pass/fail is decided by the scheme's budget on the logits' nrmse against
  the float32 reference (:mod:`parity.engines.schemes`; ``--quant-budget``). With
  ``--quant-twin S`` the twin itself is the reference fake-quantized with S, and the usual
  calibrated verdict (excess over that twin) applies: an engine running S is judged against
  what S itself costs.
* **Attribution.** Per block and component, the candidate's own (isolated, teacher-forced)
  error over the twin's, ranked: which layers the scheme costs most.
* **Sensitivity.** Quantize one block, or one component kind (attention projections, MLP,
  KV cache), at a time and measure the logits error: the table one builds by hand to choose
  the layers kept in high precision.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from parity.engines import schemes
from parity.compare.diff import compare
from parity.compare.tolerances import Tolerance
from parity.options import RunOptions
from parity.report.data import ProbeRow, ReportData
from parity.run.twin import scheme_twin

NO_TOLERANCE = Tolerance(float("inf"), 0.0)
#: isolated points that say what a block adds by itself
ATTRIBUTED = ("attn_out", "mlp_out", "resid_post")


def attribution(rows: list[ProbeRow], top: int = 10) -> dict[str, Any]:
    """Per block: the isolated excess of attention, MLP and the whole block; ranked blocks
    (by the block's own resid_post excess) and ranked (block, component) pairs."""
    per: dict[int, dict[str, Any]] = {}
    pairs = []
    for r in rows:
        point = r.name.split(".", 2)[-1] if r.block is not None else None
        if r.block is None or point not in ATTRIBUTED or r.isolated_excess is None:
            continue
        b = per.setdefault(r.block, {"block": r.block})
        b[point] = r.isolated_excess
        b[point + "_err"] = r.isolated_max_abs_err
        if point != "resid_post":
            pairs.append({"block": r.block, "component": "attn" if point == "attn_out" else "mlp",
                          "isolated_excess": r.isolated_excess, "isolated_max_abs_err": r.isolated_max_abs_err})
    blocks = sorted(per.values(), key=lambda b: b["block"])
    ranked = sorted(blocks, key=lambda b: -(b.get("resid_post") or 0.0))
    return {"blocks": blocks, "ranked_blocks": [b["block"] for b in ranked][:top],
            "ranked_components": sorted(pairs, key=lambda p: -p["isolated_excess"])[:top]}


def logits_nrmse(report: ReportData) -> float | None:
    try:
        return report.row("logits").nrmse
    except KeyError:
        return None


def judge(report: ReportData, opts: RunOptions) -> None:
    """The quantized candidate's verdict (see the module doc), in ``summary``."""
    s = report.summary
    att = attribution(report.probes)
    section: dict[str, Any] = {"scheme": opts.quant, "attribution": att,
                               "calibrated_verdict": s.get("verdict"), "calibrated_message": s.get("message")}
    s["quant"] = section
    if scheme_twin(opts):  # the twin is the scheme itself: the calibrated verdict stands
        section.update(mode="quant-twin", twin_scheme=opts.quant_twin)
        return
    scheme = schemes.get(opts.quant or "")
    budget = opts.quant_budget if opts.quant_budget is not None else scheme.budget
    err = logits_nrmse(report)
    try:
        nonfinite = (report.row("logits").nan or 0) + (report.row("logits").inf or 0)
    except KeyError:
        nonfinite = 0
    passed = err is not None and err <= budget and not nonfinite
    section.update(mode="budget", budget=budget, budget_source="--quant-budget" if opts.quant_budget is not None
                   else f"the {scheme.name} default", logits_nrmse=err, row_rule="nrmse <= budget",
                   calibrated_first_divergence=s.get("first_divergence"))
    over = rejudge(report.probes, budget)
    s["first_divergence"] = _first_over(report.probes, budget)
    section["calibrated_probes_failed"] = s.get("probes_failed")
    s["probes_failed"] = len(over)
    top = att["ranked_blocks"][:3]
    costly = ", ".join(f"{blk} ({_comp(att, blk)})" for blk in top) or "-"
    head = "PASSED" if passed else "FAILED"
    cmp = "<=" if passed else ">"
    s["verdict"] = "pass" if passed else "diverged"
    upstream = [r for r in over if r.name != "logits"]
    s["message"] = (f"{head} | quant {scheme.name} | logits nrmse {_f(err)} {cmp} budget {budget:g} "
                    f"({section['budget_source']}) | probes judged by their nrmse against the same budget: "
                    f"{len(over)} over" + (f" (upstream of the logits: {', '.join(r.name for r in upstream[:3])}"
                                            f"{', ...' if len(upstream) > 3 else ''})" if upstream and passed else "")
                    + f" | excess over the {opts.dtype} twin is attribution: largest {_x(s.get('largest_excess'))} | "
                    f"costliest blocks (isolated): {costly}")
    section["calibrated_diagnosis"] = s.get("diagnosis")
    s["diagnosis"] = _diagnosis(report, att, scheme.name, opts.dtype)


def rejudge(rows: list[ProbeRow], budget: float) -> list[ProbeRow]:
    """Every compared probe judged by what decides a budget verdict: its nrmse against the
    float32 reference within the scheme's budget (non-finite values fail). The rows, the
    verdict, the HTML badge and heatmap then tell one story; the excess over the plain twin
    stays on each row as attribution. Returns the rows over the budget."""
    over = []
    for r in rows:
        if r.status not in ("pass", "fail"):
            continue
        ok = r.nrmse is not None and math.isfinite(r.nrmse) and r.nrmse <= budget and not (r.nan or r.inf)
        r.status, r.passed = ("pass", True) if ok else ("fail", False)
        if not ok:
            over.append(r)
    return over


def _first_over(rows: list[ProbeRow], budget: float) -> dict[str, Any] | None:
    """The first probe over the scheme's budget, in the shape of summary.first_divergence."""
    i = next((i for i, r in enumerate(rows) if r.status == "fail"), None)
    if i is None:
        return None
    r = rows[i]
    return {"probe": r.name, "block": r.block, "component": r.component, "classification": "over the scheme budget",
            "growth": None, "last_matched": next((x.name for x in reversed(rows[:i]) if x.passed), None),
            "max_abs_err": r.max_abs_err, "nrmse": r.nrmse, "atol": r.atol, "rtol": r.rtol, "excess": r.excess,
            "twin_nrmse": r.twin_nrmse, "twin_max_abs_err": r.twin_max_abs_err, "budget": budget}


def _diagnosis(report: ReportData, att: dict[str, Any], scheme: str, dtype: str) -> dict[str, Any]:
    """What the scheme costs and where: replaces the bug hypotheses, which a quantized
    candidate trips everywhere (its error is not a porting bug)."""
    ev = []
    try:
        lg = report.row("logits")
        ev.append(f"logits nrmse {_f(lg.nrmse)} vs the {dtype} twin's {_f(lg.twin_nrmse)} (excess x{lg.excess or 0:.3g}): "
                  "what the scheme costs over plain rounding")
    except KeyError:
        pass
    if att["blocks"]:
        ev.append("blocks ranked by their own (isolated) excess: " + ", ".join(
            f"{b} ({_comp(att, b)})" for b in att["ranked_blocks"][:5]))
        ev.append("costliest components: " + ", ".join(
            f"block {p['block']} {p['component']} x{p['isolated_excess']:.3g}" for p in att["ranked_components"][:5]))
    else:
        ev.append("no isolated pass (--no-isolate, or the candidate cannot be teacher-forced): no per-block attribution")
    return {"block": att["ranked_blocks"][0] if att["ranked_blocks"] else None, "component": None, "cause": "quantization",
            "kind": "quantization", "hint": f"quantization error of {scheme} (fake quantization, ModelOpt), attributed per "
            "block; keep the costliest blocks in high precision with --quant-exclude 'blocks.N.*'", "evidence": ev}


def _comp(att: dict[str, Any], block: int) -> str:
    b = next(x for x in att["blocks"] if x["block"] == block)
    a, m = b.get("attn_out") or 0.0, b.get("mlp_out") or 0.0
    return f"{'attn' if a >= m else 'mlp'} x{max(a, m):.3g}"


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def _x(d: Any) -> str:
    return f"x{d['excess']:.3g} at {d['probe']}" if isinstance(d, dict) and d.get("excess") is not None else "-"


# --------------------------------------------------------------------------- sensitivity


def sensitivity(model: Any, blocks_re: Any, ids: list[int], ref_logits: Any, num_blocks: int,
                twin_nrmse: float | None, on_step: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Quantize one block, then one component kind, at a time on an already quantized
    model (its quantizers toggled, parity.engines.quant.set_enabled) and measure the logits
    error of each against the float32 reference logits. The model's quantizers are all
    enabled again afterwards."""
    import torch

    from parity.engines import quant

    active = quant.quantizers(model, blocks_re)
    x = torch.as_tensor(ids, dtype=torch.long, device=next(model.parameters()).device).reshape(1, -1)
    ref = ref_logits.reshape(-1, ref_logits.shape[-1]).float()

    def err(keep: Callable[[str], bool], label: str) -> dict[str, Any]:
        if on_step is not None:
            on_step(label)
        on = quant.set_enabled(active, keep)
        with torch.inference_mode():
            out = model(input_ids=x, use_cache=False)
        cand = getattr(out, "logits", out).reshape(ref.shape).to(ref.device, torch.float32)
        d = compare(ref, cand, NO_TOLERANCE)
        return {"quantizers": on, "logits_nrmse": d.nrmse, "logits_max_abs_err": d.max_abs_err,
                "excess": (d.nrmse / twin_nrmse) if twin_nrmse else None}

    try:
        rows = [{"block": i, **err(lambda u, i=i: u.startswith(f"blocks.{i}."), f"block {i}")} for i in range(num_blocks)]
        kinds = {k: err(lambda u, k=k: u.startswith("blocks.") and u.split(".")[2] == k, f"kind {k}")
                 for k in schemes.KINDS}
        kinds = {k: v for k, v in kinds.items() if v["quantizers"]}
        full = err(lambda u: True, "all")
    finally:
        quant.set_enabled(active, lambda u: True)
    ranked = sorted(rows, key=lambda r: -r["logits_nrmse"])
    return {"blocks": rows, "kinds": kinds, "all": full, "twin_logits_nrmse": twin_nrmse,
            "ranked_blocks": [r["block"] for r in ranked if r["quantizers"]]}


def attach_sensitivity(report: ReportData, cand: Any, ref_cap: Any, ids: list[int], calib: Any,
                       on_step: Callable[[str], Any] | None = None) -> None:
    """Run the sensitivity sweep on the quant candidate's model and add it (with its
    agreement with the isolated ranking) to ``summary["quant"]``."""
    from parity.engines import quant

    twin = calib.twin.diffs.get("logits") if calib is not None and calib.twin is not None else None
    spec = cand.probe_map.block_spec()
    sens = sensitivity(cand.model, quant.block_pattern(spec.module), ids, ref_cap.tensor("logits"), cand.num_blocks,
                       twin.nrmse if twin is not None else None, on_step)
    section = report.summary.setdefault("quant", {})
    section["sensitivity"] = sens
    section["agreement"] = agreement(section.get("attribution") or {}, sens)


def agreement(att: dict[str, Any], sens: dict[str, Any]) -> dict[str, Any]:
    """Do the isolated-excess ranking and the sensitivity ranking name the same top block?"""
    a, b = att.get("ranked_blocks") or [], sens.get("ranked_blocks") or []
    top_a, top_b = (a[0] if a else None), (b[0] if b else None)
    return {"isolated_top": top_a, "sensitivity_top": top_b, "agree": top_a is not None and top_a == top_b,
            "isolated_top3": a[:3], "sensitivity_top3": b[:3],
            "sensitivity_rank_of_isolated_top": (b.index(top_a) + 1) if top_a in b else None}

"""The targeted pass: once the first divergent probe is known, run the candidate
again keeping the full tensors of that probe and its upstream inputs only, take the
reference's from its capture and the reference model's own weights of the component at fault,
and test the hypotheses of parity.verdict.hypotheses on them (on the run's device, in float64,
or float32 for a half-precision candidate: see work_dtype).

Teacher-forced when the candidate supports it and the probe is inside a block (the block then
starts from the reference's stream, so its inputs are the reference's up to rounding), a plain
forward otherwise. Evidence, never fatal: any failure leaves the location-based diagnosis."""
from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from parity.capture import probes as canon
from parity.capture.sinks import Capture, Recorder
from parity import dtypes
from parity.run.common import isolation_inputs, stage
from parity.verdict import named
from parity.verdict.hypotheses import evaluate, load_builtin
from parity.verdict.hypotheses.core import Evidence, residual

load_builtin()  # at start-up, with the rest of parity: not inside the targeted pass a run times

ATTN_POINTS = ["attn_in", "attn.q", "attn.k", "attn.v", "attn.q_rot", "attn.k_rot", "attn_out"]
NEEDS = {
    "attn.q": ATTN_POINTS[:4], "attn.k": ATTN_POINTS[:4], "attn.v": ATTN_POINTS[:4],
    "attn.q_rot": ATTN_POINTS[:6], "attn.k_rot": ATTN_POINTS[:6], "attn_out": ATTN_POINTS,
    "mlp_in": ["resid_mid", "mlp_in"], "mlp_out": ["mlp_in", "mlp_out"], "resid_mid": ["attn_out", "resid_mid"],
    "resid_post": ["resid_mid", "mlp_out", "resid_post"],
}
HEAD = ["rope.cos", "rope.sin"]
#: reference tensors (already captured: no extra forward) another tensor of the block may have been
#: computed from by mistake: the identity search's pool (parity.verdict.hypotheses.identity)
CONTEXT = {
    "attn_in": ["@in", "@prev.mlp_out", "@prev.resid_mid"],
    "attn.q": ["attn.k", "attn.v"], "attn.k": ["attn.q", "attn.v"], "attn.v": ["attn.q", "attn.k"],
    "attn.q_rot": ["attn.k_rot", "attn.q", "attn.k", "attn.v"], "attn.k_rot": ["attn.q_rot", "attn.q", "attn.k", "attn.v"],
    "attn_out": ["@in"],
    "resid_mid": ["@in", "attn_in", "mlp_in", "@prev.mlp_out", "@prev.resid_mid"],
    "mlp_in": ["@in", "attn_out", "attn_in"],
    "mlp_out": ["resid_mid", "@in", "@prev.mlp_out"],
    "resid_post": ["resid_mid", "mlp_in", "@in", "attn_out", "@prev.mlp_out"],
}
EPS_ATTRS = ("variance_epsilon", "eps", "epsilon", "layer_norm_epsilon")
OUT_NAMES = ("o_proj", "c_proj", "out_proj", "dense", "wo")


def context_for(focus: str, num_blocks: int) -> list[str]:
    """The reference probes of :data:`CONTEXT` for ``focus`` (the block's input, the previous block's)."""
    p = canon.parse(focus)
    if p.block is None:
        last = num_blocks - 1
        return [f"blocks.{last}.{x}" for x in ("mlp_out", "resid_mid", "resid_post")] if focus == "final_norm" else []
    b = p.block
    out = []
    for x in CONTEXT.get(p.point, []):
        if x == "@in":
            out.append(isolation_inputs(num_blocks)[b])
        elif x.startswith("@prev."):
            if b > 0:
                out.append(f"blocks.{b - 1}.{x[6:]}")
        else:
            out.append(f"blocks.{b}.{x}")
    return out


def probes_for(focus: str, num_blocks: int) -> list[str]:
    """The focus probe, its upstream inputs, and the rotary tables."""
    p = canon.parse(focus)
    names = set(HEAD) | {focus}
    if p.block is not None:
        names |= {f"blocks.{p.block}.{x}" for x in NEEDS.get(p.point, [p.point])}
        if p.point == "attn_in":
            names.add(isolation_inputs(num_blocks)[p.block])
    elif focus == "final_norm":
        names.add(f"blocks.{num_blocks - 1}.resid_post")
    elif focus == "logits":
        names.add("final_norm")
    return canon.in_order(names)


class _Enough(Exception):
    """Raised from the sink once every wanted probe arrived: the rest of the forward is not needed."""


class _StopWhenDone:
    """A sink keeping full tensors (a copy each, no statistics: the first pass has them),
    ending the forward when the last wanted probe arrives (the targeted pass then costs the
    forward up to the probe's block, not the whole model)."""

    def __init__(self, kept: dict[str, torch.Tensor], wanted: list[str]) -> None:
        self.kept, self.left = kept, set(wanted)

    def __call__(self, name: str, tensor: Any) -> None:
        self.kept[name] = tensor.detach().clone()
        self.left.discard(name)
        if not self.left:
            raise _Enough


def capture(cand: Any, ids: list[int], ref_cap: Capture, names: list[str], num_blocks: int,
            teacher_forced: bool) -> tuple[dict[str, torch.Tensor], str]:
    """The candidate's full tensors of ``names`` (what it offers), and how they were run."""
    offered = set(cand.available_probes())
    wanted = [n for n in names if n in offered]
    kept: dict[str, torch.Tensor] = {}
    block = canon.parse(names[-1]).block
    forcing = isolation_inputs(num_blocks)
    try:
        if teacher_forced and block is not None and cand.supports_isolation() and all(n in ref_cap for n in forcing):
            how = "teacher-forced"
            blocks = [n for n in wanted if canon.parse(n).block is not None]
            lowest = min((canon.parse(n).block for n in blocks), default=0)
            skip = lowest if lowest > 1 and hasattr(cand, "skip_blocks_below") else 0
            how += f" (blocks 1..{skip - 1} skipped)" if skip else ""
            try:  # a skipped block's input is not forced: it is passed through unread
                inputs = {i: ref_cap.tensor(n) for i, n in enumerate(forcing) if not 0 < i < skip}
                _forced(cand, ids, inputs, blocks, kept, skip)
            except _Enough:
                raise
            except Exception:  # noqa: BLE001 - a block that cannot be skipped: every block computes
                how = "teacher-forced"
                kept.clear()
                inputs = {i: ref_cap.tensor(n) for i, n in enumerate(forcing)}
                cand.capture_isolated(ids, inputs, blocks, _StopWhenDone(kept, blocks))
        else:
            how = "forward"
            cand.capture(ids, wanted, _StopWhenDone(kept, wanted))
    except _Enough:
        how += ", stopped after the last probe needed"
    return kept, how


def _forced(cand: Any, ids: list[int], inputs: dict[int, Any], blocks: list[str], kept: dict[str, torch.Tensor],
            skip: int) -> None:
    """The teacher-forced capture, blocks 1..skip-1 passing their input through."""
    if skip:
        cand.skip_blocks_below = skip
    try:
        cand.capture_isolated(ids, inputs, blocks, _StopWhenDone(kept, blocks))
    finally:
        if skip:
            cand.skip_blocks_below = 0


def _linears(module: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Linear)]


def _module(model: nn.Module, pmap: Any, probe: str, config: Any) -> nn.Module | None:
    try:
        return model.get_submodule(pmap.bind(probe, config).module)
    except Exception:  # noqa: BLE001 - not mapped to a module: no weights for this component
        return None


def weights(model: nn.Module | None, pmap: Any, focus: str, config: Any, hidden: int | None) -> dict[str, Any]:
    """The reference's own weights of the component at ``focus``, by role."""
    if model is None:
        return {}
    stream = getattr(model, "parity_stream", None)  # a streamed reference: its weights of focus, loaded for the read
    if stream is not None:
        with stream.holding(pmap.bind(focus, config).module):
            return _weights(model, pmap, focus, config, hidden)
    return _weights(model, pmap, focus, config, hidden)


def _weights(model: nn.Module, pmap: Any, focus: str, config: Any, hidden: int | None) -> dict[str, Any]:
    p = canon.parse(focus)
    out: dict[str, Any] = {}
    with torch.no_grad():
        if p.point in ("attn_in", "mlp_in", "final_norm"):
            norm = _module(model, pmap, focus, config)
            if norm is not None and getattr(norm, "weight", None) is not None:
                out["norm.weight"] = norm.weight.detach()
                eps = next((float(getattr(norm, a)) for a in EPS_ATTRS if hasattr(norm, a)), None)
                out["norm.eps"] = None if eps is None else float(f"{eps:.7g}")  # a float32 attribute: 1e-05, not 9.99e-06
        elif p.block is not None and (p.point.startswith("attn") or p.point == "resid_mid"):
            attn = _module(model, pmap, f"blocks.{p.block}.attn_out", config)
            if attn is not None:
                _attention(attn, hidden, out)
        elif p.block is not None and p.point in ("mlp_out", "resid_post"):
            mlp = _module(model, pmap, f"blocks.{p.block}.mlp_out", config)
            if mlp is not None:
                lin = _linears(mlp)
                downs = [(n, m) for n, m in lin if m.out_features == hidden]
                ups = [(n, m) for n, m in lin if m.in_features == hidden and (n, m) not in downs]
                if downs and ups:
                    out["mlp.down"] = downs[-1][1].weight.detach()
                    out["mlp.up"] = [m.weight.detach() for _, m in ups]
                    out["mlp.names"] = [n for n, _ in ups]
                out["biases"] = {n: m.bias.detach() for n, m in lin if m.bias is not None}
    return out


def _attention(attn: nn.Module, hidden: int | None, out: dict[str, Any]) -> None:
    lin = _linears(attn)
    o = next(((n, m) for n, m in lin if n.split(".")[-1] in OUT_NAMES), lin[-1] if lin else None)
    if o is None:
        return
    out["o_proj.weight"] = o[1].weight.detach()
    if o[1].bias is not None:
        out["o_proj.bias"] = o[1].bias.detach()
    out["biases"] = {n: m.bias.detach() for n, m in lin if m.bias is not None}
    ins = [(n, m) for n, m in lin if m is not o[1] and m.in_features == hidden]
    if len(ins) == 3:  # separate q, k, v projections
        for kind, (_, m) in zip("qkv", ins):
            out[f"attn.{kind}.weight"] = m.weight.detach()
            if m.bias is not None:
                out[f"attn.{kind}.bias"] = m.bias.detach()


def facts(config: Any, num_blocks: int) -> dict[str, Any]:
    """Model facts the hypotheses name their parameters with."""
    def get(*names: str) -> Any:
        return next((getattr(config, n) for n in names if getattr(config, n, None) is not None), None)

    heads = get("num_attention_heads", "n_head")
    hidden = get("hidden_size", "n_embd")
    head_dim = get("head_dim", "kv_channels") or (hidden // heads if hidden and heads else None)
    rope = get("rope_parameters", "rope_scaling") or {}
    base = (rope.get("rope_theta") if isinstance(rope, dict) else None) or get("rope_theta", "rotary_emb_base")
    pct = get("partial_rotary_factor", "rotary_pct") or 1.0
    return {"num_heads": heads, "num_kv_heads": get("num_key_value_heads") or heads, "hidden_size": hidden,
            "head_dim": head_dim, "rope_base": base, "rotary_dim": int(head_dim * pct) if head_dim else None,
            "seq_length": get("seq_length") if (get("use_logn_attn") or get("use_dynamic_ntk")) else None,
            "logn_attn": bool(get("use_logn_attn")), "num_blocks": num_blocks}


def work_dtype(dtype: str) -> torch.dtype:
    """What the hypotheses compute in: float32 for a float16/bfloat16 candidate (its rounding,
    2^-11 or 2^-8, is what a fit is judged against; float32 adds 2^-24, and its kernels are
    those the float32 reference already ran), float64 otherwise (a float32 candidate)."""
    return torch.float32 if dtypes.find(dtype) in (dtypes.FP16, dtypes.BF16) else torch.float64


def evidence(focus: str, ref_cap: Capture, cand_tensors: dict[str, torch.Tensor], model: nn.Module | None, pmap: Any,
             config: Any, num_blocks: int, dtype: str, twin_nrmse: float | None, device: Any) -> Evidence | None:
    """The evidence of ``focus`` on ``device`` (None when the focus was not captured); each
    tensor is moved and converted to the working dtype when a hypothesis first reads it."""
    if focus not in cand_tensors or focus not in ref_cap:
        return None
    f = facts(config, num_blocks)
    names = set(cand_tensors) | set(HEAD) | set(probes_for(focus, num_blocks)) | set(context_for(focus, num_blocks))
    ref = {n: ref_cap.tensor(n) for n in names if n in ref_cap and ref_cap.records[n].tensor is not None}
    cand = dict(cand_tensors)
    for n, t in list(cand.items()):  # a flat [T, H] where the reference has [T, h, d] (or back)
        if n in ref and t.shape != ref[n].shape and t.numel() == ref[n].numel():
            cand[n] = t.reshape(ref[n].shape)
    w = weights(model, pmap, focus, config, f["hidden_size"])
    p = canon.parse(focus)
    return Evidence(focus, p.point, p.block, ref, cand, w, f, dtype, twin_nrmse, work_dtype(dtype), device)


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def _reference(ref: Any, names: list[str]) -> Capture:
    """The reference capture, with the probes of ``names`` it lacks (a --probes filter left
    them out) captured by running the reference model again for those only."""
    missing = [n for n in names if n not in ref.capture and n in set(ref.probe_map.names(ref.source.num_blocks))]
    if not missing or ref.model is None:
        return ref.capture
    from parity.engines.torch.runner import ModuleBackend

    cap = Capture("reference (targeted)", dict(ref.capture.meta))
    cap.records.update(ref.capture.records)
    backend = ModuleBackend(ref.model, ref.probe_map, getattr(ref.model, "config", ref.source.config), "reference",
                            ref.source.num_blocks)
    with backend:
        backend.capture(ref.ids, missing, Recorder(cap, keep=True))
    return cap


#: a step's error (upstream matched) is the same forced or not, up to this factor; beyond it,
#: forcing the block's input changed what the candidate computes
FORCED_AGREE = 1.1


def _forcing_changed(ev: Evidence, summary: dict[str, Any], focus: str) -> bool:
    """Whether the teacher-forced capture does not show the error of the full run at the focus:
    none left, or (a step whose upstream matched, where forcing changes nothing honest) an error
    of another size than the full run's."""
    if ev.identity <= ev.tolerance:
        return True
    fd = summary.get("first_divergence") or {}
    full = fd.get("nrmse")
    if fd.get("probe") != focus or fd.get("classification") != "step" or not full or not math.isfinite(full):
        return False
    forced = residual(ev.out_ref, ev.out_cand)
    return not (full / FORCED_AGREE <= forced <= full * FORCED_AGREE)


def refine(summary: dict[str, Any], cand: Any, ref: Any, calib: Any, dtype: str | None, progress: Any,
           timings: dict[str, float], teacher_forced: bool) -> None:
    """Name the cause of ``summary.diagnosis`` (a bug) by testing hypotheses on the full
    tensors of its probe: the targeted pass. Failures are recorded, never raised."""
    diag = summary.get("diagnosis")
    if not diag or diag.get("kind") != "bug" or diag.get("cause") == "overflow":
        return
    focus = diag.get("probe") or (summary.get("first_divergence") or {}).get("probe")
    if focus is None:
        return
    n = ref.source.num_blocks
    try:
        with stage(progress, f"targeted pass (full tensors around {focus})", timings):
            names = probes_for(focus, n)
            ref_cap = _reference(ref, names)
            try:
                with cand:
                    (tensors, how), cap_s = timed(capture, cand, ref.ids, ref_cap, names, n, teacher_forced)
            except Exception:  # noqa: BLE001 - a candidate that cannot run forced (its block needs its own residual)
                if not teacher_forced:
                    raise
                with cand:
                    (tensors, how), cap_s = timed(capture, cand, ref.ids, ref_cap, names, n, False)
            twin = calib.twin if calib is not None else None
            table = (twin.isolated if how.startswith("teacher-forced") else twin.diffs) if twin is not None else {}
            d = table.get(focus)
            device = next(iter(tensors.values())).device if tensors else "cpu"
            ev = evidence(focus, ref_cap, tensors, ref.model, ref.probe_map, ref.source.config, n,
                          dtype or "float32", None if d is None else d.nrmse, device)
            if ev is not None and how.startswith("teacher-forced") and _forcing_changed(ev, summary, focus):
                # forcing the block's input hid or changed the error (an engine that fuses the previous
                # block's residual add into this block's norm: the add is not run when forced)
                with cand:
                    (tensors, how), more_s = timed(capture, cand, ref.ids, ref_cap, names, n, False)
                cap_s += more_s
                d = twin.diffs.get(focus) if twin is not None else None
                ev = evidence(focus, ref_cap, tensors, ref.model, ref.probe_map, ref.source.config, n,
                              dtype or "float32", None if d is None else d.nrmse, device)
            if ev is None:
                diag["targeted"] = {"probe": focus, "state": "the candidate does not expose this probe"}
                return
            results, hyp_s = timed(evaluate, ev)
            named.apply(diag, results, ev, how, {"capture_s": round(cap_s, 4), "hypotheses_s": round(hyp_s, 4)})
    except Exception as exc:  # noqa: BLE001 - evidence, never fatal
        diag["targeted"] = {"probe": focus, "state": f"failed: {type(exc).__name__}: {' '.join(str(exc).split())}"}

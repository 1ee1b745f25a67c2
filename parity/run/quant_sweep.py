"""``parity quant-sweep``: the seed's ablation table on one model -- fp16 (the precision
twin) and each quantization scheme against the float32 reference: logits error, excess over
the fp16 twin, first divergent block, the most sensitive blocks (sensitivity sweep) and the
costliest blocks in isolation, ROUGE-L of greedy outputs against the reference's, and the
wall time parity spent per scheme. Latency is not measured: fake quantization runs in
floating point and is no faster than fp16.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

from parity.engines.base import Backend
from parity.engines.contract import EngineContext
from parity.engines.quant import schemes
from parity.options import RunOptions
from parity.run.common import Progress

def _row(name: str, report: Any, wall: float) -> dict[str, Any]:
    s = report.summary
    lg = report.row("logits")
    fd = s.get("first_divergence") or {}
    q = s.get("quant") or {}
    sens = q.get("sensitivity") or {}
    att = q.get("attribution") or {}
    agree = q.get("agreement") or {}
    return {"scheme": name, "status": "ran", "logits_nrmse": lg.nrmse, "logits_max_abs_err": lg.max_abs_err,
            "excess_over_twin": lg.excess, "first_divergent_block": fd.get("block") if fd else None,
            "first_divergent_probe": fd.get("probe") if fd else None,
            "sensitive_blocks": (sens.get("ranked_blocks") or [])[:3], "isolated_blocks": (att.get("ranked_blocks") or [])[:3],
            "top_block_agrees": agree.get("agree"), "budget": q.get("budget"), "verdict": s.get("verdict"),
            "message": s.get("message"), "wall_s": round(wall, 2), "quant": q or None}


def execute(opts: RunOptions, names: list[str], progress: Progress | None = None, *, rouge: bool = True,
            dataset: str | None = None, limit: int | None = None, max_new_tokens: int = 32) -> dict[str, Any]:
    """The sweep's document: ``table`` (one row per scheme), the eval settings, run facts."""
    from parity.engines.quant import runner as quant
    from parity.run.candidate import compare_candidate
    from parity.run.reference import prepare_reference

    base = dataclasses.replace(opts, candidate="torch", quant=None, quant_exclude=[], quant_sensitivity=False)
    ref = prepare_reference(base, progress)
    rouge = rouge and _has_tokenizer(opts, ref.source)
    t0 = time.perf_counter()
    fp16 = compare_candidate(ref, base, progress)
    rows = [_row(opts.dtype, fp16.report, time.perf_counter() - t0)]
    rows[0]["scheme"] = f"{opts.dtype} (twin)"
    models: dict[str, Any] = {}
    for name in names:
        scheme = schemes.get(name)
        if scheme.needs_cuda and not ref.device.startswith("cuda"):
            rows.append({"scheme": name, "status": f"needs CUDA (device {ref.device})"})
            continue
        kept: dict[str, Any] = {}

        def create(ctx: EngineContext, kept: dict[str, Any] = kept) -> Backend:
            kept["backend"] = quant.create(ctx)
            return kept["backend"]

        q_opts = dataclasses.replace(base, candidate="quant", quant=name, quant_sensitivity=True)
        t0 = time.perf_counter()
        try:
            res = compare_candidate(ref, q_opts, progress, create=create)
        except Exception as exc:  # noqa: BLE001 - one scheme failing (a ModelOpt kernel missing) ends only its row
            text = " ".join(str(exc).split())[:200]
            rows.append({"scheme": name, "status": f"error: {type(exc).__name__}: {text}", "wall_s": round(time.perf_counter() - t0, 2)})
            kept.clear()
            continue
        rows.append(_row(name, res.report, time.perf_counter() - t0))
        if rouge:
            models[name] = kept["backend"].model
        else:
            kept.clear()
    ev = _rouge(ref, opts, rows, models, progress, dataset, limit, max_new_tokens) if rouge else None
    return {"schema_version": "1.1", "run": {**fp16.report.run, "model": opts.model, "family": ref.source.family.name,
                                            "command": "quant-sweep", "candidate": None},
            "eval": ev, "latency": "not measured: fake quantization runs in floating point (no int8/int4/FP8 kernels), "
            "so its speed says nothing about an engine's", "table": rows}


def _rouge(ref: Any, opts: RunOptions, rows: list[dict[str, Any]], models: dict[str, Any], progress: Progress | None,
           dataset: str | None, limit: int | None, max_new: int) -> dict[str, Any] | None:
    """ROUGE-L and token agreement of each side's greedy outputs against the reference's
    (the fp16 twin's and each scheme's), on the eval set. None without a tokenizer."""
    from parity.engines.torch.runner import derive
    from parity.loading.inputs import load_vocab
    from parity.run import evaluate as ev
    from parity.run.twin import REFERENCE_ATTN

    vocab = load_vocab(opts, ref.source)
    if vocab.tokenizer is None:
        return None
    items, label = ev.load_items(dataset, limit)
    gopts = dataclasses.replace(opts, chat=True)
    prompts = ev.prompt_ids(items, gopts, ref.source, vocab)
    budgets = ev.check_context(items, prompts, ref.source, max_new)
    stops = ev.sides(_GenView(opts), ref.source, vocab).ref_stops
    update = getattr(progress, "update", None)
    if progress is not None:
        progress(f"ROUGE: greedy outputs of the reference ({len(prompts)} prompts)")
    ref_out = ev.generate_all(ref.model, prompts, stops, budgets, 0, update)
    sides = {rows[0]["scheme"]: derive(ref.model, opts.dtype, ref.device, REFERENCE_ATTN), **models}
    for row in rows:
        model = sides.pop(row["scheme"], None)
        if model is None:
            continue
        if row["scheme"] in models:  # quantized weights folded once: decode steps need not re-quantize them
            from parity.engines.quant.runner import modelopt

            modelopt().fold_weight(model)
        if progress is not None:
            progress(f"ROUGE: greedy outputs of {row['scheme']}")
        out = ev.generate_all(model, prompts, stops, budgets, 0, update)
        ov = ev.overall(ev.compare_outputs(items, ref_out, out, stops, stops, vocab))
        row["rougeL_vs_reference"], row["token_agreement"] = ov["rougeL"], ov["agreement"]
        del model
    return {"dataset": label, "prompts": len(items), "max_new_tokens": max_new, "chat": True,
            "metric": "rougeL F1 x100 (rouge-score), candidate output vs the reference's"}


def _has_tokenizer(opts: RunOptions, source: Any) -> bool:
    from parity.loading.inputs import load_vocab

    return load_vocab(opts, source).tokenizer is not None


@dataclasses.dataclass
class _GenView:
    """The few generation settings parity.run.evaluate.sides reads (the reference's own)."""

    opts: RunOptions
    stop_tokens: list[str] | None = None
    candidate_generation_config: str | None = None
    faults: list[str] = dataclasses.field(default_factory=list)

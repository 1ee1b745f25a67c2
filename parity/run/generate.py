"""Generation parity: greedy decode on the reference and the candidate, step by step.

Both sides prefill the prompt and then decode one token per step through their own KV
cache, in lockstep. Step 0 is the token chosen from the prefill logits (the single forward
pass `parity run` checks); step 1 is the first step that reads the cache.

Per step the candidate's logits are compared with the reference's (``parity.compare.diff.compare``),
with the reference's margin (top-1 minus top-2 logit) and the top-k overlap. Steps are
comparable while both sides decode the same context: always with ``--teacher-forcing`` (the
candidate is fed the reference's tokens), otherwise up to and including the first token flip.

A step's verdict is calibrated by default (parity.verdict.calibrate): a third decoder, the precision
twin (the reference in the candidate's dtype), is fed the reference's tokens, and a step
fails when the candidate's logits error is more than the budget times the twin's at that
step. ``--tolerance absolute`` (or ``--atol``/``--rtol``) uses the preset's ``logits``
tolerance instead.

A flip is a *near tie* when the reference's own gap between its token and the candidate's,
``ref[r] - ref[c]``, is at most ``NEAR_TIE_FACTOR`` x the band one logit may move: the
budget times the twin's max abs error at that step (absolute: ``atol + rtol *
max(|ref[r]|, |ref[c]|)``). Two logits each allowed to move by one band can swap order when
they were that close. A larger gap is a *confident* flip -- a bug. (The step's observed max
abs error cannot be the yardstick: any flip implies ``ref[r] - ref[c] <= 2 * max_abs_err``,
so that test would call every flip a near tie.)
"""
from __future__ import annotations

import time
from collections.abc import Callable
from types import SimpleNamespace
from dataclasses import dataclass, field
from typing import Any

import torch

from parity import engines

from parity.loading import inputs
from parity.loading import chat as chatfmt
from parity.verdict.calibrate import Calibration
from parity.faults import apply_generation
from parity.faults.generation import CandidateGeneration
from parity.run.decode import Stepper
from parity.compare.diff import compare
from parity.errors import BackendError, InputError, UsageError
from parity.loading.genconfig import candidate_settings, eos_list, reference_settings, sampling_diff, stop_set_diff
from parity.options import GenerateOptions, RunOptions  # noqa: F401  (GenerateOptions: this module's API)
from parity.report.data import ReportData
from parity.loading.source import ModelSource
from parity.compare.tolerances import Tolerance

NEAR_TIE_FACTOR = 2.0
Progress = Callable[[str], Any]


def classify_flip(gap: float, band: float, factor: float = NEAR_TIE_FACTOR) -> str:
    """``near-tie`` when the reference's gap between the two tokens is within ``factor``
    tolerance bands, else ``confident``."""
    return "near-tie" if gap <= factor * band else "confident"


def margin(logits: torch.Tensor) -> float:
    top = torch.topk(logits, 2).values
    return float(top[0] - top[1])


def topk_overlap(ref: torch.Tensor, cand: torch.Tensor, k: int) -> float:
    a = set(torch.topk(ref, k).indices.tolist())
    b = set(torch.topk(cand, k).indices.tolist())
    return len(a & b) / k


NO_TOLERANCE = Tolerance(float("inf"), 0.0)


def step_row(i: int, pos: int, rl: torch.Tensor, cl: torch.Tensor, r: int, c: int,
             tol: Tolerance, k: int, calib: Calibration | None = None, tl: torch.Tensor | None = None) -> dict[str, Any]:
    """One compared step; ``calib`` (calibrated) judges against the twin's logits ``tl``
    (None: a twin without error, i.e. a float32 candidate)."""
    calibrated = calib is not None and calib.calibrated
    d = compare(rl, cl, NO_TOLERANCE if calibrated else tol)
    row: dict[str, Any] = {
        "step": i, "position": pos, "ref_token": r, "cand_token": c, "match": r == c, "comparable": True,
        "passed": d.passed, "max_abs_err": d.max_abs_err, "mean_abs_err": d.mean_abs_err, "cosine": d.cosine,
        "ref_margin": margin(rl), "topk_overlap": topk_overlap(rl, cl, k), "gap": None, "flip": None,
    }
    if calibrated:
        assert calib is not None
        td = compare(rl, tl, NO_TOLERANCE) if tl is not None else None
        absmax = float(rl.abs().max())
        x = calib.excess_of(d, td, absmax)
        row.update(passed=d.n_nonfinite_mismatch == 0 and not calib.over(x), excess=x.value,
                   twin_max_abs_err=x.twin_max_abs_err, twin_nrmse=x.twin_nrmse, nrmse=d.nrmse)
    if r != c:
        gap = float(rl[r] - rl[c])
        if calibrated:
            band = calib.allowed_abs(td, absmax)  # type: ignore[union-attr]
        else:
            band = tol.atol + tol.rtol * max(abs(float(rl[r])), abs(float(rl[c])))
        row["gap"], row["flip"] = gap, classify_flip(gap, band)
    return row


def lone_row(i: int, pos: int, r: int | None, c: int | None) -> dict[str, Any]:
    return {"step": i, "position": pos, "ref_token": r, "cand_token": c, "match": r == c, "comparable": False,
            "passed": None, "max_abs_err": None, "mean_abs_err": None, "cosine": None, "ref_margin": None,
            "topk_overlap": None, "gap": None, "flip": None}


@dataclass
class Side:
    stepper: Stepper
    stops: list[int]
    seq: list[int] = field(default_factory=list)  # tokens that entered the sequence
    ended: str | None = None  # "stop" | "max-new-tokens"

    def logits(self, prompt: list[int]) -> torch.Tensor:
        return self.stepper.prefill(prompt) if not self.seq else self.stepper.step(self.seq[-1])

    def push(self, tok: int, limit: int) -> None:
        self.seq.append(tok)
        if tok in self.stops:
            self.ended = "stop"
        elif len(self.seq) >= limit:
            self.ended = "max-new-tokens"


def decode_lockstep(ref: Side, cand: Side, prompt: list[int], max_new: int, teacher: bool,
                    tol: Tolerance, k: int, calib: Calibration | None = None,
                    twin: Side | str | None = None, on_step: Any = None) -> tuple[list[dict[str, Any]], list[int]]:
    """Rows per step and the candidate's own argmax per step. ``twin``: the precision twin,
    fed the reference's tokens; "candidate" when the candidate is the twin; None: no twin.
    ``on_step(text)`` hears of each step (progress)."""
    rows: list[dict[str, Any]] = []
    choices: list[int] = []
    same_context = True
    for i in range(max_new):
        if ref.ended and cand.ended:
            break
        if on_step is not None:
            on_step(f"step {i + 1} of at most {max_new}")
        rl = ref.logits(prompt) if not ref.ended else None
        cl = cand.logits(prompt) if not cand.ended else None
        tl = twin.logits(prompt) if isinstance(twin, Side) and rl is not None else cl if twin == "candidate" else None
        r = int(rl.argmax()) if rl is not None else None
        c = int(cl.argmax()) if cl is not None else None
        pos = len(prompt) + i
        if rl is not None and cl is not None and (teacher or same_context):
            rows.append(step_row(i, pos, rl, cl, r, c, tol, k, calib, tl))
        else:
            rows.append(lone_row(i, pos, r, c))
        if r is not None:
            ref.push(r, max_new)
            if isinstance(twin, Side):
                twin.push(r, max_new + 1)
        if c is not None:
            choices.append(c)
            cand.push(r if (teacher and r is not None) else c, max_new)
            rows[-1]["fed_token"] = cand.seq[-1]
        same_context = same_context and r == c
    return rows, choices


def first_divergent(rows: list[dict[str, Any]]) -> int | None:
    for row in rows:
        if row["comparable"] and (not row["passed"] or row["flip"] == "confident"):
            return int(row["step"])
    return None


def stop_outcome(ref: Side, cand: Side, vocab: chatfmt.Vocab) -> dict[str, Any] | None:
    """Overrun (candidate went on past the token that ended the reference) or early stop."""
    if ref.ended == "stop":
        k, s = len(ref.seq) - 1, ref.seq[-1]
        if len(cand.seq) > k + 1 and cand.seq[k] == s:
            return {"kind": "overrun", "tokens": len(cand.seq) - (k + 1), "past": vocab.label(s), "at_step": k,
                    "candidate_ended_by": _ended(cand, vocab),
                    "message": f"candidate continued {len(cand.seq) - (k + 1)} tokens past `{vocab.names.get(s, s)}` "
                               f"(reference stopped at step {k}; candidate ended by {_ended(cand, vocab)})"}
    if cand.ended == "stop" and len(cand.seq) < len(ref.seq) and cand.seq == ref.seq[:len(cand.seq)]:
        j, t = len(cand.seq) - 1, cand.seq[-1]
        return {"kind": "early-stop", "tokens": len(ref.seq) - len(cand.seq), "past": vocab.label(t), "at_step": j,
                "candidate_ended_by": _ended(cand, vocab),
                "message": f"candidate stopped at step {j} on `{vocab.names.get(t, t)}`, which the reference "
                           f"decodes past ({len(ref.seq) - len(cand.seq)} tokens short)"}
    return None


def _ended(side: Side, vocab: chatfmt.Vocab) -> str:
    if side.ended == "stop":
        return f"stop token `{vocab.names.get(side.seq[-1], side.seq[-1])}`"
    return "--max-new-tokens"


# --------------------------------------------------------------------------- setup


#: each decode step is a forward on both sides (and the twin): more is not a parity check
MAX_NEW_TOKENS = 1 << 16


def check_options(opts: GenerateOptions) -> None:
    if opts.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens {opts.max_new_tokens}: need at least 1 new token.")
    if opts.overlap_k < 1:
        raise UsageError(f"--overlap-k {opts.overlap_k}: need k >= 1.")
    if opts.max_new_tokens > MAX_NEW_TOKENS:
        raise UsageError(f"--max-new-tokens {opts.max_new_tokens}: parity decodes at most {MAX_NEW_TOKENS} steps.")


def context_length(config: Any) -> int | None:
    for key in ("max_position_embeddings", "seq_length", "n_positions"):
        v = getattr(config, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def prompt_ids(opts: GenerateOptions, source: ModelSource, vocab: chatfmt.Vocab) -> tuple[list[int], str]:
    from parity.loading.inputs import chat_ids, plain_ids

    if opts.chat:
        ids, how = chat_ids(opts, source, vocab)
    else:
        ids, how = plain_ids(opts, source), "plain"
    ids = inputs.check_ids(ids, source.vocab_size)
    ctx = context_length(source.config)
    if ctx is not None and len(ids) >= ctx:
        raise InputError(f"the prompt has {len(ids)} tokens, the model's context is {ctx}.",
                         note="a prompt must leave room for at least one new token (max_position_embeddings / seq_length)")
    if ctx is not None and len(ids) + opts.max_new_tokens > ctx:
        opts.max_new_tokens = ctx - len(ids)
        how += f"; --max-new-tokens clamped to {opts.max_new_tokens} by the context ({ctx})"
    return ids, how


@dataclass
class Plan:
    ids: list[int]
    prompt_how: str
    vocab: chatfmt.Vocab
    ref_settings: Any
    cand_settings: Any
    cand_gen: CandidateGeneration


def plan(opts: GenerateOptions, source: ModelSource) -> Plan:
    """Everything decided before a model is built: bad input fails here, fast."""
    from parity.loading.inputs import load_vocab

    check_options(opts)
    if opts.overlap_k > source.vocab_size:
        raise UsageError(f"--overlap-k {opts.overlap_k}: more than the model's {source.vocab_size} tokens.",
                         note=f"k is between 1 and {source.vocab_size}")
    vocab = load_vocab(opts, source)
    ids, how = prompt_ids(opts, source, vocab)
    stop_texts = opts.stop_tokens or list(source.preset.chat.get("stop_tokens", []))
    chat_stops = chatfmt.resolve_stop_tokens(stop_texts, vocab)
    ref_s = reference_settings(source.preset, source.checkpoint, chat_stops)
    cand_s = candidate_settings(ref_s, opts.candidate_generation_config)
    gen = CandidateGeneration(list(cand_s.stop_ids), cand_s.config, vocab.specials,
                              eos_list(getattr(source.config, "eos_token_id", None)))
    apply_generation(opts.faults, gen, source.num_blocks)
    cand_s.stop_ids, cand_s.config = gen.stop_ids, gen.config
    if opts.faults:
        cand_s.source += " + faults " + ", ".join(opts.faults)
    return Plan(ids, how, vocab, ref_s, cand_s, gen)


# --------------------------------------------------------------------------- verdict


def hint(rows: list[dict[str, Any]], first: int | None) -> str | None:
    if first is None:
        return None
    if first == 0:
        return ("the prefill logits (step 0, one forward pass over the prompt) already differ: run "
                "`parity run` on the same prompt to find the block and component.")
    row0 = rows[0]
    if row0["comparable"] and row0["passed"]:
        which = "the first step that uses the KV cache" if first == 1 else "a decode step"
        return (f"step 0 (prefill, the single forward pass) matches but step {first}, {which}, diverges: "
                "check position handling at decode - the position ids / rotary offset given to the cached "
                "step's token (past length), NTK/logN scaling decided at prefill - and how the KV cache is "
                "appended and read.")
    return None


def verdict(gen: dict[str, Any], tol: Tolerance) -> tuple[bool, str, list[str]]:
    rows, first = gen["steps"], gen["first_divergent_step"]
    reasons: list[str] = []
    if first is not None:
        row = rows[first]
        if row["passed"]:
            what = f"confident flip {row['ref_token']} -> {row['cand_token']} (gap {row['gap']:.3g})"
        elif row.get("excess") is not None:
            what = (f"logits excess x{row['excess']:.3g} > budget x{gen['budget']:g} (max_abs {row['max_abs_err']:.3g} "
                    f"vs twin {row['twin_max_abs_err'] if row['twin_max_abs_err'] is not None else 0:.3g})")
        else:
            what = f"logits max_abs={row['max_abs_err']:.3g} > {tol}"
        reasons.append(f"step {first} | {what}")
    if gen["overrun"]:
        reasons.append(gen["overrun"]["message"])
    if gen["stop_set_diff"] and not gen["stop_set_diff"].get("engine_extras_only"):
        d = gen["stop_set_diff"]
        parts = [f"candidate lacks {', '.join(d['missing_in_candidate'])}" if d["missing_in_candidate"] else "",
                 f"candidate adds {', '.join(d['extra_in_candidate'])}" if d["extra_in_candidate"] else ""]
        reasons.append("stop set differs: " + "; ".join(p for p in parts if p))
    if gen["sampling_diff"]:
        reasons.append("sampling config differs: " + ", ".join(d["key"] for d in gen["sampling_diff"]))
    return not reasons, "FAILED | " + " | ".join(reasons) if reasons else "", reasons


def pass_message(gen: dict[str, Any]) -> str:
    compared = [r for r in gen["steps"] if r["comparable"]]
    worst = max(compared, key=lambda r: r["max_abs_err"], default=None)
    flips = [r for r in compared if r["flip"]]
    msg = f"PASSED | generation parity over {len(compared)} compared steps ({gen['mode']})"
    if worst is not None:
        msg += f" | largest logits error {worst['max_abs_err']:.3g} at step {worst['step']}"
    if flips:
        msg += f" | near-tie flip at step {flips[0]['step']} (gap {flips[0]['gap']:.3g})"
    else:
        msg += " | tokens identical" if all(r["match"] for r in compared) else ""
    return msg


# --------------------------------------------------------------------------- run


@dataclass
class GenerateResult:
    report: ReportData
    passed: bool


def build_candidate(opts: GenerateOptions, source: ModelSource, ref_model: Any, device: str) -> Any:
    from parity.capture.probemap import find_map
    from parity.run.common import CandidateContext

    mod = engines.load(opts.candidate)
    pmap = find_map(source.probe_map_name, opts.probe_dirs)
    cand = mod.create(CandidateContext(opts, source, pmap, ref_model, device))
    if not hasattr(cand, "model") and not hasattr(cand, "stepper"):
        raise BackendError(f"candidate '{opts.candidate}' exposes no torch module to decode with.",
                           note="generation parity needs a candidate with a KV-cache forward (torch)")
    return cand


def execute(opts: GenerateOptions, progress: Progress | None = None) -> GenerateResult:
    from parity.engines.pytorch import ModuleBackend, check_device, torch_dtype
    from parity.capture.probemap import find_map
    from parity.run.candidate import run_facts
    from parity.run.reference import check_port_options
    from parity.run.twin import calibration_for, candidate_is_twin
    from parity.run.twin import twin_model as make_twin

    timings: dict[str, float] = {}
    torch_dtype(opts.dtype)
    device = check_device(opts.device)
    ref_device = check_device(opts.ref_device or device)
    mod = engines.load(opts.candidate)
    if hasattr(mod, "prepare"):  # a candidate that decides the run's dtype (llamacpp: the GGUF file's)
        mod.prepare(opts, progress)
        torch_dtype(opts.dtype)
    source = ModelSource.resolve(opts.model, opts.checkpoint, opts.seed, opts.trust_remote_code, opts.shape,
                                  activations=getattr(opts, "activations", "plain"))
    fault_specs = check_port_options(opts, source.num_blocks, generation=True)
    p = plan(opts, source)
    calib = calibration_for(opts, False)
    tols = source.preset.tolerance_table(opts.dtype).override(opts.atol, opts.rtol)
    tol = tols.lookup("logits")

    t0 = time.perf_counter()
    _say(progress, "building reference")
    ref_model = source.build(ref_device)
    for spec in (s for s in fault_specs if s.fault.target == "model"):  # weights both sides load
        ctx = SimpleNamespace(num_blocks=source.num_blocks, config=source.config,
                              probe_map=find_map(source.probe_map_name, opts.probe_dirs))
        spec.fault.apply(ref_model, spec, ctx)
    ref_desc = ModuleBackend(ref_model, None, source.config, "reference", source.num_blocks).describe()  # type: ignore[arg-type]
    twin: Side | str | None = None
    twin_model = None
    if calib.calibrated and calib.dtype != "float32":
        if candidate_is_twin(opts, ref_desc.get("attn")) and not opts.faults:  # a fault makes it another model
            twin = "candidate"
        else:  # derived before the candidate is built: nothing the candidate does reaches it
            _say(progress, f"building precision twin ({calib.dtype})")
            twin_model, _ = make_twin(ref_model, opts, device)
    _say(progress, f"building candidate ({opts.candidate})")
    cand = build_candidate(opts, source, ref_model, device)
    timings["build"] = round(time.perf_counter() - t0, 4)

    _say(progress, f"decoding {opts.max_new_tokens} steps on both sides" + (" and the twin" if twin_model is not None else ""))
    t0 = time.perf_counter()
    cand_stepper = cand.stepper(p.cand_gen.position_offset) if hasattr(cand, "stepper") \
        else Stepper(cand.model, p.cand_gen.position_offset)
    with Stepper(ref_model) as rs, cand_stepper as cs, \
            Stepper(twin_model if twin_model is not None else ref_model) as ts:
        engine_stops(cs, p, opts)
        ref = Side(rs, p.ref_settings.stop_ids)
        cnd = Side(cs, p.cand_settings.stop_ids)
        if twin_model is not None:
            twin = Side(ts, [])
        rows, choices = decode_lockstep(ref, cnd, p.ids, opts.max_new_tokens, opts.teacher_forcing, tol, opts.overlap_k,
                                        calib, twin, getattr(progress, "update", None))
    timings["decode"] = round(time.perf_counter() - t0, 4)

    gen = generation_section(opts, p, rows, choices, ref, cnd, tol, calib, twin)
    passed, fail_msg, reasons = verdict(gen, tol)
    gen["verdict"] = "pass" if passed else "fail"
    gen["hint"] = hint(rows, gen["first_divergent_step"])
    facts = run_facts(opts, source, ref_desc, cand.describe(), p.ids, tols, timings, calib)
    facts["command"] = "generate"
    summary = {"verdict": gen["verdict"], "message": pass_message(gen) if passed else fail_msg,
               "first_divergence": None, "reasons": reasons,
               "diagnosis": {"hint": gen["hint"], "evidence": []} if gen["hint"] else None}
    return GenerateResult(ReportData(run=facts, probes=[], summary=summary, generation=gen), passed)


def engine_stops(stepper: Any, p: Plan, opts: GenerateOptions) -> None:
    """An engine that reads its own stop set (llama.cpp: the GGUF metadata's end-of-generation
    tokens) decodes with it, unless a generation config or fault was given for it."""
    if not hasattr(stepper, "stop_ids") or opts.candidate_generation_config or p.cand_gen.notes:
        return
    p.cand_settings.stop_ids = list(stepper.stop_ids())
    p.cand_settings.from_engine = True
    eos = getattr(stepper, "eos_id", lambda: None)()
    if eos is not None:
        p.cand_settings.config["eos_token_id"] = eos
    p.cand_settings.source = f"{opts.candidate}: the engine's end-of-generation tokens (GGUF metadata)"


def generation_section(opts: GenerateOptions, p: Plan, rows: list[dict[str, Any]], choices: list[int],
                       ref: Side, cnd: Side, tol: Tolerance, calib: Calibration | None = None,
                       twin: Side | str | None = None) -> dict[str, Any]:
    v = p.vocab
    flips = [r["step"] for r in rows if r["comparable"] and not r["match"]]
    calibrated = calib is not None and calib.calibrated
    twin_what = ("the candidate itself (torch in its dtype with eager attention is the reference run in that dtype)"
                 if twin == "candidate" else "the reference in the candidate's dtype, fed the reference's tokens"
                 if isinstance(twin, Side) else "none: a float32 candidate is judged against float32 rounding")
    return {
        "mode": "teacher-forced" if opts.teacher_forcing else "free-running",
        "greedy": True,
        "prompt": {"ids": p.ids, "tokens": len(p.ids), "chat": opts.chat, "how": p.prompt_how, "text": opts.prompt},
        "max_new_tokens": opts.max_new_tokens,
        "overlap_k": opts.overlap_k,
        "tolerance": "calibrated" if calibrated else "absolute",
        "budget": calib.budget if calibrated else None,  # type: ignore[union-attr]
        "twin": twin_what if calibrated else None,
        "logits_tolerance": None if calibrated else {"atol": tol.atol, "rtol": tol.rtol},
        "near_tie_factor": NEAR_TIE_FACTOR,
        "faults": list(opts.faults),
        "special_tokens": dict(v.specials),
        "fault_notes": p.cand_gen.notes,
        "first_divergent_step": first_divergent(rows),
        "first_token_flip_step": flips[0] if flips else None,
        "steps": rows,
        "error_curve": [r["max_abs_err"] for r in rows if r["comparable"]],
        "reference": {**p.ref_settings.to_dict(v), "tokens": ref.seq, "text": v.text(ref.seq),
                      "ended_by": _ended(ref, v)},
        "candidate": {**p.cand_settings.to_dict(v), "tokens": cnd.seq, "text": v.text(cnd.seq),
                      "predicted": choices, "predicted_text": v.text(choices), "ended_by": _ended(cnd, v)},
        "stop_set_diff": _engine_extras(stop_set_diff(p.ref_settings, p.cand_settings, v), p),
        "sampling_diff": sampling_diff(p.ref_settings.config, p.cand_settings.config),
        "overrun": stop_outcome(ref, cnd, v),
    }


def _engine_extras(diff: dict[str, Any] | None, p: Plan) -> dict[str, Any] | None:
    """Mark a stop-set difference that is only an engine's own extra end-of-generation tokens
    (llama.cpp also ends on e.g. `<|endoftext|>` when the file's eos_token_id is the reference's):
    reported, not a failure -- unless the generation ends on one (the early stop is then the
    reason). A missing stop token or a different eos_token_id in the file still fails."""
    if diff is None or diff["missing_in_candidate"] or not p.cand_settings.from_engine:
        return diff
    eos = p.cand_settings.config.get("eos_token_id")
    if eos is None or eos not in p.ref_settings.stop_ids:
        return diff
    return {**diff, "engine_extras_only": True,
            "note": "the engine also ends generation on " + ", ".join(diff["extra_in_candidate"])
                    + " (its own end-of-generation tokens; the file's eos_token_id is the reference's)"}


def _say(progress: Progress | None, what: str) -> None:
    if progress is not None:
        progress(what)

"""Task-level parity (``parity eval``): greedy generations of the reference and the candidate
for a set of prompts, compared per prompt and overall -- token agreement, first divergent
token, exact match, ROUGE-1/2/L/Lsum of the candidate's output against the reference's and,
where the set has targets, of each side against the targets (the delta the seed's
TensorRT-LLM ablation reports).

ROUGE is Google's ``rouge-score`` (the implementation Hugging Face ``evaluate`` wraps), F1 in
percent, with its default tokenizer and the Porter stemmer; ``rougeLsum`` splits summaries at
newlines (the outputs are scored as generated, no sentence splitter).

Input: JSONL, one object per line with ``prompt`` (used as is) or ``article`` (wrapped in a
summarization instruction), and optionally ``target`` or ``highlights``. A bad line is an
input error naming its number. The built-in set (``models/data/summarize.jsonl``) holds a
few short news-style articles written for parity, with two-sentence highlights.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parity.errors import InputError, UsageError

BUILTIN = "data/summarize.jsonl"
SUMMARIZE = "Summarize the following article in two sentences.\n\n{article}"
ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
Progress = Callable[[str], Any]


@dataclass
class Item:
    line: int
    text: str
    kind: str  # "prompt" | "article"
    target: str | None = None

    @property
    def instruction(self) -> str:
        return SUMMARIZE.format(article=self.text) if self.kind == "article" else self.text


def builtin_path() -> Path:
    from parity import resources

    path = resources.find_file("models", BUILTIN)
    if path is None:
        raise InputError(f"the built-in evaluation set {BUILTIN} is missing from parity's models folder.",
                         note="reinstall parity, or give --dataset FILE.jsonl")
    return path


#: bounds of an evaluation set: the file, one line's text, the prompts, JSON nesting
MAX_DATASET_BYTES = 64 << 20
MAX_LINE_CHARS = 256 << 10
MAX_PROMPTS = 100_000
_SURROGATE = re.compile("[\ud800-\udfff]")
LINE_NOTE = 'one JSON object per line: {"prompt": ...} or {"article": ..., "highlights": ...}'


def load_items(path: str | Path | None = None, limit: int | None = None) -> tuple[list[Item], str]:
    """The prompts of a JSONL file (or the built-in set), and where they came from: the file
    UTF-8 and at most MAX_DATASET_BYTES, each line one JSON object (nesting bounded) with a
    prompt of at most MAX_LINE_CHARS characters -- a bad line an input error naming its number."""
    from parity.validate import read_text

    where = Path(path) if path is not None else builtin_path()
    if not where.is_file():
        raise InputError(f"--dataset {where}: no such file.", note="give a JSONL file: " + LINE_NOTE)
    text = read_text(where, InputError, "--dataset", MAX_DATASET_BYTES)
    items: list[Item] = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            items.append(_item(where, n, line))
            if len(items) > MAX_PROMPTS:
                raise InputError(f"{where}: more than {MAX_PROMPTS} prompts.", note="use --limit N, or split the file")
    if not items:
        raise InputError(f"{where}: no prompts (the file is empty).", note=LINE_NOTE)
    label = f"built-in {BUILTIN}" if path is None else str(where)
    return (items[:limit] if limit else items), label


def _item(where: Path, n: int, line: str) -> Item:
    from parity.validate import parse_json

    if len(line) > MAX_LINE_CHARS:
        raise InputError(f"{where}: line {n} is {len(line)} characters; parity takes at most {MAX_LINE_CHARS} per prompt.",
                         note="shorten the prompt: the model's context bounds it anyway")
    obj = parse_json(line, InputError, f"{where}: line {n}")
    if not isinstance(obj, dict):
        raise InputError(f"{where}: line {n} is a JSON {type(obj).__name__}, not an object.", note=LINE_NOTE)
    kind = "prompt" if "prompt" in obj else "article" if "article" in obj else None
    text = obj.get(kind) if kind else None
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{where}: line {n} has no 'prompt' or 'article' text.", note=LINE_NOTE)
    if "target" in obj and "highlights" in obj:
        raise InputError(f"{where}: line {n} has both 'target' and 'highlights'.", note="keep one of them")
    target = obj.get("target", obj.get("highlights"))
    if target is not None and not isinstance(target, str):
        raise InputError(f"{where}: line {n}: 'target'/'highlights' must be a string.", note=LINE_NOTE)
    for key, value in (("text", text), ("target", target)):
        if isinstance(value, str) and _SURROGATE.search(value):
            raise InputError(f"{where}: line {n}: its {key} holds a lone surrogate escape (\\udXXX), not text.",
                             note="write the text as UTF-8")
    return Item(n, text, kind or "prompt", target)


# --------------------------------------------------------------------------- metrics


def scorer() -> Any:
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise UsageError("ROUGE needs Google's rouge-score package, which is not installed.",
                         note="pip install 'parity-debugger[eval]' (rouge-score)") from None
    return rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)


def rouge(sc: Any, reference: str, prediction: str) -> dict[str, float]:
    """F1 in percent of ``prediction`` against ``reference`` (two empty texts: 100)."""
    if not reference.strip() and not prediction.strip():
        return {k: 100.0 for k in ROUGE_KEYS}
    s = sc.score(reference, prediction)
    return {k: round(100.0 * s[k].fmeasure, 4) for k in ROUGE_KEYS}


def token_metrics(ref: list[int], cand: list[int]) -> dict[str, Any]:
    """Position-wise agreement over the longer output, the first differing position, exact match."""
    n = max(len(ref), len(cand))
    same = sum(1 for a, b in zip(ref, cand) if a == b)
    first = next((i for i, (a, b) in enumerate(zip(ref, cand)) if a != b), None)
    if first is None and len(ref) != len(cand):
        first = min(len(ref), len(cand))
    return {"agreement": 1.0 if n == 0 else same / n, "first_divergent_token": first, "exact_match": ref == cand}


def overall(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over prompts (ROUGE, agreement), exact-match rate, overruns."""
    def mean(key: str, sub: str | None = None, among: list[dict[str, Any]] = rows) -> float | None:
        vals = [(r.get(key) or {}).get(sub) if sub else r.get(key) for r in among]
        vals = [v for v in vals if v is not None]
        return round(sum(vals) / len(vals), 4) if vals else None

    out: dict[str, Any] = {"prompts": len(rows), "agreement": mean("agreement"),
                           "exact_match": mean("exact_match"), "overruns": sum(1 for r in rows if r["stop_outcome"])}
    for k in ROUGE_KEYS:
        out[k] = mean("rouge_vs_reference", k)
    if any(r.get("rouge_ref_vs_target") for r in rows):  # over the prompts that have a target
        with_target = [r for r in rows if r.get("rouge_ref_vs_target")]
        out["target_prompts"] = len(with_target)
        for k in ROUGE_KEYS:
            ref_t, cand_t = mean("rouge_ref_vs_target", k, with_target), mean("rouge_cand_vs_target", k, with_target)
            out[f"target_{k}_reference"], out[f"target_{k}_candidate"] = ref_t, cand_t
            out[f"target_{k}_delta"] = None if ref_t is None or cand_t is None else round(cand_t - ref_t, 4)
    return out


# --------------------------------------------------------------------------- generation


def greedy(model: Any, ids: list[int], stops: list[int], max_new: int, position_offset: int = 0) -> tuple[list[int], str]:
    """Greedy decode with the model's KV cache: the new tokens (a final stop token included)
    and what ended it ("stop" | "max-new-tokens")."""
    from parity.run.decode import Stepper

    seq: list[int] = []
    with Stepper(model, position_offset) as st:
        logits = st.prefill(ids)
        while True:
            t = int(logits.argmax())
            seq.append(t)
            if t in stops:
                return seq, "stop"
            if len(seq) >= max_new:
                return seq, "max-new-tokens"
            logits = st.step(t)


def prompt_ids(items: list[Item], opts: Any, source: Any, vocab: Any) -> list[list[int]]:
    from parity.loading import chat as chatfmt
    from parity.loading import inputs

    if vocab.tokenizer is None:
        raise InputError("parity eval needs a tokenizer: this model has none (a preset or --shape with seeded weights).",
                         note="use --model smollm2, a --checkpoint DIR with tokenizer files, or --tokenizer PATH")
    out = []
    for it in items:
        if opts.chat:
            ids, _ = chatfmt.wrap_prompt(source.preset.chat.get("template", "chatml"), vocab, prompt=it.instruction,
                                         ids=None, system=opts.system)
        else:
            ids = inputs.encode(vocab.tokenizer, it.instruction)
        out.append(inputs.check_ids(ids, source.vocab_size))
    return out


def check_context(items: list[Item], prompts: list[list[int]], source: Any, max_new: int) -> list[int]:
    """Each prompt's new-token budget: --max-new-tokens, clamped so that prompt and output fit
    the model's context. A --max-new-tokens the context cannot hold, or a prompt that fills it,
    is an input error."""
    from parity.loading.limits import check_tokens
    from parity.run.generate import context_length

    ctx = context_length(source.config)
    if ctx is None:
        for it, ids in zip(items, prompts):
            check_tokens(len(ids) + max_new, source.config_dict, f"line {it.line} of the evaluation set")
        return [max_new] * len(prompts)
    if max_new >= ctx:
        raise UsageError(f"--max-new-tokens {max_new}: the model's context is {ctx} tokens, prompt included.",
                         note=f"give --max-new-tokens below {ctx}")
    for it, ids in zip(items, prompts):
        if len(ids) >= ctx:
            raise InputError(f"line {it.line} of the evaluation set: its prompt has {len(ids)} tokens, the model's "
                             f"context is {ctx}.", note="shorten the prompt: it must leave room for new tokens")
        check_tokens(min(ctx, len(ids) + max_new), source.config_dict, f"line {it.line} of the evaluation set")
    return [min(max_new, ctx - len(ids)) for ids in prompts]


def generate_all(model: Any, prompts: list[list[int]], stops: list[int], max_new: int | list[int], position_offset: int = 0,
                 on_step: Progress | None = None, who: str = "") -> list[tuple[list[int], str]]:
    """Greedy outputs of every prompt; ``max_new`` one budget, or one per prompt."""
    budgets = max_new if isinstance(max_new, list) else [max_new] * len(prompts)
    out = []
    for k, (ids, budget) in enumerate(zip(prompts, budgets)):
        if on_step is not None:
            on_step(f"{who}prompt {k + 1} of {len(prompts)}")
        out.append(greedy(model, ids, stops, budget, position_offset))
    return out


def compare_outputs(items: list[Item], ref_out: list[tuple[list[int], str]], cand_out: list[tuple[list[int], str]],
                    ref_stops: list[int], cand_stops: list[int], vocab: Any) -> list[dict[str, Any]]:
    """Per-prompt rows: texts, token metrics, ROUGE, stop outcome (an overrun named)."""
    from parity.run.generate import Side, stop_outcome

    sc = scorer()
    rows = []
    for it, (r, r_end), (c, c_end) in zip(items, ref_out, cand_out):
        r_text, c_text = vocab.text(_body(r, r_end)), vocab.text(_body(c, c_end))
        ref_side, cand_side = Side(None, ref_stops, list(r), r_end), Side(None, cand_stops, list(c), c_end)  # type: ignore[arg-type]
        outcome = stop_outcome(ref_side, cand_side, vocab)
        row: dict[str, Any] = {"line": it.line, "kind": it.kind, "ref_tokens": len(r), "cand_tokens": len(c),
                               "ref_ended_by": r_end, "cand_ended_by": c_end, **token_metrics(r, c),
                               "rouge_vs_reference": rouge(sc, r_text, c_text), "stop_outcome": outcome,
                               "reference_text": r_text, "candidate_text": c_text, "target": it.target}
        if it.target is not None:
            row["rouge_ref_vs_target"] = rouge(sc, it.target, r_text)
            row["rouge_cand_vs_target"] = rouge(sc, it.target, c_text)
        rows.append(row)
    return rows


def _body(seq: list[int], ended: str) -> list[int]:
    """The output without the token that ended it."""
    return seq[:-1] if ended == "stop" else seq


# --------------------------------------------------------------------------- run


@dataclass
class Sides:
    """Stop sets and decode settings of both sides (the candidate's after generation faults)."""

    ref_stops: list[int]
    cand_stops: list[int]
    position_offset: int
    notes: list[str]


def sides(opts: Any, source: Any, vocab: Any) -> Sides:
    from parity.faults import apply_generation
    from parity.faults.generation import CandidateGeneration
    from parity.loading import chat as chatfmt
    from parity.loading.genconfig import candidate_settings, eos_list, reference_settings

    stop_texts = opts.stop_tokens or list(source.preset.chat.get("stop_tokens", []))
    ref_s = reference_settings(source.preset, source.checkpoint, chatfmt.resolve_stop_tokens(stop_texts, vocab))
    cand_s = candidate_settings(ref_s, opts.candidate_generation_config)
    gen = CandidateGeneration(list(cand_s.stop_ids), cand_s.config, vocab.specials,
                              eos_list(getattr(source.config, "eos_token_id", None)))
    apply_generation(opts.faults, gen, source.num_blocks)
    return Sides(list(ref_s.stop_ids), list(gen.stop_ids), gen.position_offset, list(gen.notes))


def execute(opts: Any, dataset: str | None = None, limit: int | None = None,
            progress: Any = None) -> dict[str, Any]:
    """One ``parity eval``: the document its JSON holds (``eval`` section with per-prompt rows
    and the overall metrics)."""
    import time

    from parity import engines
    from parity.engines.torch.runner import check_device, torch_dtype
    from parity.loading.inputs import load_vocab
    from parity.loading.source import ModelSource
    from parity.run.generate import build_candidate
    from parity.run.reference import check_port_options

    check_max_new(opts.max_new_tokens)
    items, label = load_items(dataset, limit)
    torch_dtype(opts.dtype)
    device = check_device(opts.device)
    if opts.candidate != "reference":
        engines.info(opts.candidate)
    scorer()  # before any model is built
    source = ModelSource.resolve(opts.model, opts.checkpoint, opts.seed, opts.trust_remote_code, opts.shape,
                                  activations=getattr(opts, "activations", "plain"), family_dirs=opts.family_dirs)
    check_port_options(opts, source.num_blocks, generation=True)
    vocab = load_vocab(opts, source)
    prompts = prompt_ids(items, opts, source, vocab)
    budgets = check_context(items, prompts, source, opts.max_new_tokens)
    sd = sides(opts, source, vocab)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    _say(progress, "building reference")
    ref_model = source.build(check_device(opts.ref_device or device))
    if opts.candidate == "reference":
        cand_model, cand_desc = ref_model, {"backend": "reference", "note": "the reference itself"}
    else:
        _say(progress, f"building candidate ({opts.candidate})")
        cand = build_candidate(opts, source, ref_model, device)
        cand_model, cand_desc = cand.model, cand.describe()
    timings["build"] = round(time.perf_counter() - t0, 3)
    update = getattr(progress, "update", None)
    t0 = time.perf_counter()
    _say(progress, f"generating on the reference ({len(prompts)} prompts, at most {opts.max_new_tokens} tokens)")
    ref_out = generate_all(ref_model, prompts, sd.ref_stops, budgets, 0, update)
    _say(progress, f"generating on the candidate ({opts.candidate}, {len(prompts)} prompts)")
    cand_out = generate_all(cand_model, prompts, sd.cand_stops, budgets, sd.position_offset, update)
    timings["generate"] = round(time.perf_counter() - t0, 3)
    rows = compare_outputs(items, ref_out, cand_out, sd.ref_stops, sd.cand_stops, vocab)
    ov = overall(rows)
    section = {"dataset": label, "chat": bool(opts.chat), "greedy": True, "max_new_tokens": opts.max_new_tokens,
               "rouge": "rouge-score (Google), F1 x100, Porter stemmer", "faults": list(opts.faults),
               "fault_notes": sd.notes, "overall": ov, "prompts": rows}
    run = {"command": "eval", "model": opts.model, "family": source.family.name, "source": source.label, "candidate": {**cand_desc, "name": opts.candidate},
           "dtype": opts.dtype, "device": device, "timings_s": timings}
    return {"schema_version": "1.1", "run": run, "summary": summary_of(ov, _label(opts)), "eval": section}


def _label(opts: Any) -> str:
    """The candidate in the summary line: its engine, and the scheme of a quantized one."""
    scheme = getattr(opts, "quant", None)
    return f"{opts.candidate} {scheme}" if opts.candidate == "quant" and scheme else opts.candidate


def check_max_new(n: int) -> None:
    from parity.run.generate import MAX_NEW_TOKENS

    if n < 1:
        raise UsageError(f"--max-new-tokens {n}: need at least 1 new token.", note="leave it out for the default")
    if n > MAX_NEW_TOKENS:
        raise UsageError(f"--max-new-tokens {n}: parity generates at most {MAX_NEW_TOKENS} tokens per prompt.",
                         note="the model's context bounds it too")


def summary_of(ov: dict[str, Any], candidate: str) -> dict[str, Any]:
    msg = (f"EVAL | {candidate} vs reference over {ov['prompts']} prompts | rougeL {ov['rougeL']:.1f} | "
           f"rouge1 {ov['rouge1']:.1f} | rouge2 {ov['rouge2']:.1f} | token agreement {ov['agreement']:.3f} | "
           f"exact match {ov['exact_match']:.2f}")
    if ov.get("target_rougeL_delta") is not None:
        msg += (f" | vs targets: rougeL {ov['target_rougeL_reference']:.1f} (reference) -> "
                f"{ov['target_rougeL_candidate']:.1f} (candidate), delta {ov['target_rougeL_delta']:+.1f}")
    if ov["overruns"]:
        msg += f" | {ov['overruns']} overrun(s) / early stop(s)"
    return {"verdict": "report", "message": msg}


def _say(progress: Any, what: str) -> None:
    if progress is not None:
        progress(what)

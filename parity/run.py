"""One parity run: build both sides, capture, compare, diagnose, assemble ReportData.

Data flows one way (DESIGN.md): source -> reference capture -> candidate capture compared
on arrival -> rows -> diagnosis -> ReportData. Nothing here renders.
"""
from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from datetime import datetime, timezone
from typing import Any

from parity import __version__, backends, inputs
from parity import probes as canon
from parity.calibrate import Calibration, Excess, Twin, check_budget, resolve_mode
from parity.capture import Capture, Comparator, Recorder
from parity.diagnose import diagnose
from parity.diff import DiffStats, TensorStats, fp16_headroom
from parity.errors import InputError, ParityError, UsageError
from parity.probemap import ProbeMap, find_map
from parity.report.data import ProbeRow, ReportData
from parity.source import ModelSource
from parity.options import RunOptions
from parity.tolerances import Tolerance, ToleranceTable

Progress = Callable[[str], Any]


@dataclass
class CandidateContext:
    """What a candidate backend's ``create`` receives."""

    options: RunOptions
    source: ModelSource
    probe_map: ProbeMap
    reference_model: Any
    device: str


@dataclass
class RunResult:
    report: ReportData
    reference: Capture
    candidate: Capture
    input_ids: list[int]


@contextmanager
def _stage(progress: Progress | None, what: str, timings: dict[str, float]) -> Iterator[None]:
    if progress is not None:
        progress(what)
    t0 = time.perf_counter()
    yield
    timings[what] = round(time.perf_counter() - t0, 4)


def resolve_inputs(opts: RunOptions, source: ModelSource) -> list[int]:
    """The run's token ids: --tokens (seeded), --prompt (the tokenizer's) or --input-ids,
    wrapped in the model's chat format with --chat."""
    if opts.chat:
        ids, _ = chat_ids(opts, source, load_vocab(opts, source))
        return ids
    return plain_ids(opts, source)


def plain_ids(opts: RunOptions, source: ModelSource) -> list[int]:
    given = [x for x in (opts.tokens, opts.prompt, opts.input_ids) if x is not None]
    if len(given) > 1:
        raise ParityError("give one of --tokens, --prompt, --input-ids.")
    vocab = source.vocab_size
    if opts.prompt is not None:
        tok = inputs.load_tokenizer(source.family.name, source.checkpoint, opts.tokenizer)
        return inputs.check_ids(inputs.encode(tok, opts.prompt), vocab)
    if opts.input_ids is not None:
        return inputs.check_ids(inputs.read_ids(opts.input_ids), vocab)
    specials = list(source.preset.chat.get("special_tokens", {}).values())
    high = min(specials) if specials and min(specials) > vocab // 2 else None
    return inputs.seeded_ids(inputs.DEFAULT_TOKENS if opts.tokens is None else opts.tokens, vocab, source.seed, high)


def load_vocab(opts: RunOptions, source: ModelSource) -> Any:
    """The special tokens and (when there is one) the tokenizer, for chat formats and texts."""
    from parity import chat as chatfmt

    tok = None
    if opts.prompt is not None or opts.tokenizer is not None:
        tok = inputs.load_tokenizer(source.family.name, source.checkpoint, opts.tokenizer)
    elif source.checkpoint is not None:
        try:
            tok = inputs.load_tokenizer(source.family.name, source.checkpoint, None)
        except InputError:
            tok = None  # a checkpoint without tokenizer files: ids only
    return chatfmt.vocab_for(source.preset.chat, tok)


def chat_ids(opts: RunOptions, source: ModelSource, vocab: Any) -> tuple[list[int], str]:
    """The prompt (text, or ids) in the model's chat format, and how it was made."""
    from parity import chat as chatfmt

    template = source.preset.chat.get("template", "chatml")
    raw = None if opts.prompt is not None else plain_ids(opts, source)
    ids, how = chatfmt.wrap_prompt(template, vocab, prompt=opts.prompt, ids=raw, system=opts.system)
    return inputs.check_ids(ids, source.vocab_size), how


class CandidateFailed(ParityError):
    """The candidate raised during its forward pass; ``report`` holds what was compared before."""

    def __init__(self, message: str, note: str | None, report: ReportData) -> None:
        super().__init__(message, note)
        self.report = report


def check_port_options(opts: RunOptions, num_blocks: int, generation: bool = False) -> list[Any]:
    """Validate --port / --port-map / --fault before any work; returns the fault specs."""
    from parity import faults

    if opts.candidate != "port":
        for flag, value in (("--port", opts.port), ("--port-map", opts.port_map)):
            if value:
                raise UsageError(f"{flag} needs --candidate port.", note="e.g. parity run --candidate port --port my_port.py:build")
    specs = faults.parse(opts.faults, num_blocks)
    gen = [s for s in specs if s.fault.target == "generation"]
    if gen and not generation:
        raise UsageError(f"fault '{gen[0].fault.name}' acts at decode steps: a single forward pass cannot show it.",
                         note=f"use parity generate --fault {gen[0].fault.name}")
    if opts.candidate != "port":
        wrong = [s for s in specs if s.fault.target == "port"]
        if wrong:
            raise UsageError(f"fault '{wrong[0].fault.name}' alters the built-in port: it needs --candidate port.",
                             note="model faults (" + ", ".join(n for n, f in faults.FAULTS.items() if f.target != "port")
                             + ") work with any candidate")
    return specs


def gpu_keep_bytes() -> int:
    """GPU memory the reference may keep probe tensors in ($PARITY_GPU_KEEP_GIB, default
    0.5); the rest go to pinned host memory and are copied back probe by probe."""
    import os

    try:
        return int(float(os.environ.get("PARITY_GPU_KEEP_GIB", "0.5")) * 2**30)
    except ValueError:
        raise UsageError(f"PARITY_GPU_KEEP_GIB={os.environ['PARITY_GPU_KEEP_GIB']!r} is not a number.") from None


def isolation_inputs(num_blocks: int) -> list[str]:
    """Reference probes that teacher forcing feeds to each block."""
    return ["embed"] + [f"blocks.{i}.resid_post" for i in range(num_blocks - 1)]


@dataclass
class Reference:
    """A reference capture that several candidates can be compared against."""

    options: RunOptions
    source: ModelSource
    probe_map: ProbeMap
    selected: list[str]
    ids: list[int]
    model: Any  # the reference module; None once released
    facts: dict[str, Any]
    capture: Capture
    device: str
    timings: dict[str, float] = field(default_factory=dict)
    #: precision twins measured against this reference, by (dtype, device, isolated)
    twins: dict[tuple[Any, ...], Twin] = field(default_factory=dict)
    #: float64 sum of every parameter when the reference ran (see check_weights)
    digest: Any = None


def prepare_reference(opts: RunOptions, progress: Progress | None = None) -> Reference:
    """Build the reference model and capture every selected probe (kept on the CPU), plus
    the block inputs teacher forcing needs."""
    from parity.backends.pytorch import ModuleBackend, check_device, torch_dtype

    timings: dict[str, float] = {}
    torch_dtype(opts.dtype)  # validate before any work
    device = check_device(opts.device)
    ref_device = check_device(opts.ref_device or device)
    source = ModelSource.resolve(opts.model, opts.checkpoint, opts.seed, opts.trust_remote_code, opts.shape)
    fault_specs = check_port_options(opts, source.num_blocks)
    pmap = find_map(source.preset.probe_map, opts.probe_dirs)
    all_names = pmap.names(source.num_blocks)
    selected = canon.select(all_names, opts.probes)
    forcing = set(isolation_inputs(source.num_blocks)) & set(all_names) if opts.isolate else set()
    ref_probes = canon.in_order(set(selected) | forcing)  # teacher forcing needs the block inputs
    ids = resolve_inputs(opts, source)

    with _stage(progress, "building reference", timings):
        ref_model = source.build(ref_device)
        for spec in (s for s in fault_specs if s.fault.target == "model"):  # weights both sides load
            spec.fault.apply(ref_model, spec, SimpleNamespace(num_blocks=source.num_blocks, probe_map=pmap, config=source.config))
    reference = ModuleBackend(ref_model, pmap, getattr(ref_model, "config", source.config), "reference", source.num_blocks)
    ref_cap = Capture("reference", reference.describe())
    with _stage(progress, "running reference", timings), reference:
        reference.capture(ids, ref_probes, Recorder(ref_cap, keep=True, store_device="cpu",
                                                    gpu_budget_bytes=gpu_keep_bytes()))
    return Reference(opts, source, pmap, selected, ids, ref_model, reference.describe(), ref_cap, device, timings,
                     digest=weights_digest(ref_model))


def weights_digest(model: Any) -> Any:
    """One float64 sum per parameter, on the parameters' device (no copy of the weights)."""
    import torch

    with torch.no_grad():
        return torch.stack([p.detach().sum(dtype=torch.float64) for p in model.parameters()])


def check_weights(ref: Reference) -> None:
    """Refuse to derive anything more from a reference model whose weights changed since
    the reference ran: a candidate wrote into the state dict it was given."""
    import torch

    if ref.digest is None or ref.model is None:
        return
    now = weights_digest(ref.model)
    if not torch.equal(torch.nan_to_num(now, nan=0.0), torch.nan_to_num(ref.digest, nan=0.0)):
        raise ParityError("the reference model's weights changed after the reference ran: an earlier candidate "
                          "wrote into the weights it was given.",
                          note="copy the state dict's tensors before changing them in a port factory")


#: the kernel tolerance of calibrated runs: elements are not judged one by one
NO_ELEMENT_TOLERANCE = ToleranceTable(Tolerance(float("inf"), 0.0))
DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def calibration_for(opts: RunOptions, explicit_tolerances: bool) -> Calibration:
    """The run's verdict settings (mode and budget; the twin comes later), validated."""
    mode = resolve_mode(opts.tolerance, explicit_tolerances or opts.atol is not None or opts.rtol is not None)
    budget = check_budget(opts.budget) if opts.budget is not None else None
    if budget is not None and mode != "calibrated":
        raise UsageError("--budget applies to calibrated verdicts.", note="drop --budget, or use --tolerance calibrated")
    calib = Calibration(mode, DTYPE_NAMES.get(opts.dtype, opts.dtype))
    if budget is not None:
        calib.budget = budget
    return calib


#: the reference's (and so the twin's) attention implementation (ModelSource.build's default)
REFERENCE_ATTN = "eager"


def candidate_is_twin(opts: RunOptions, ref_attn: str | None) -> bool:
    """The torch candidate with the reference's attention, uncompiled, on the twin's device
    *is* an honest run of the reference in its dtype: the twin's forward would repeat it."""
    return (opts.candidate == "torch" and not opts.compile and opts.attn == REFERENCE_ATTN
            and ref_attn in (None, REFERENCE_ATTN))


def measure_twin(ref: Reference, opts: RunOptions, calib: Calibration, progress: Progress | None,
                 timings: dict[str, float], skip_if_candidate: bool = True) -> Twin | None:
    """The precision twin of ``calib.dtype`` on the run's device (measured once per
    reference): the reference's own weights and code, derived before any candidate of this
    run is built, so nothing a candidate does reaches it. None when the candidate is the twin
    (``skip_if_candidate``): its own errors are the floor (see _twin_from_candidate)."""
    if not calib.calibrated:
        return None
    if calib.dtype == "float32":
        return Twin("float32", "reference", "the float32 reference itself (floor: float32 rounding)")
    if skip_if_candidate and candidate_is_twin(opts, ref.facts.get("attn")):
        return None  # filled from the candidate's own diffs (see compare_candidate)
    key = (calib.dtype, ref.device, opts.isolate)
    if key in ref.twins:
        return ref.twins[key]
    if ref.model is None:
        raise ParityError("the reference model was released before its precision twin was measured.")
    check_weights(ref)
    from parity.backends.pytorch import ModuleBackend, derive

    t0 = time.perf_counter()
    with _stage(progress, f"running precision twin ({calib.dtype})", timings):
        model = derive(ref.model, opts.dtype, ref.device, REFERENCE_ATTN)
        backend = ModuleBackend(model, ref.probe_map, getattr(model, "config", ref.source.config), "twin",
                                ref.source.num_blocks)
        comparator = Comparator(ref.capture, Capture("twin", backend.describe()), NO_ELEMENT_TOLERANCE)
        with backend:
            backend.capture(ref.ids, ref.selected, comparator)
            diffs = dict(comparator.diffs)
            iso: dict[str, DiffStats] = {}
            if opts.isolate and backend.supports_isolation():
                iso, _ = _isolated(backend, ref.ids, ref.capture, NO_ELEMENT_TOLERANCE, ref.selected, ref.source.num_blocks)
        desc = backend.describe()
        del backend, model, comparator
        _free_device_memory(ref.device)
    label = f"the reference in {calib.dtype} on {desc.get('device')}, {REFERENCE_ATTN} attention"
    twin = ref.twins[key] = Twin(calib.dtype, "measured", label, diffs, iso, time.perf_counter() - t0)
    return twin


def _free_device_memory(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def compare_candidate(ref: Reference, opts: RunOptions, progress: Progress | None = None, *,
                      tolerances: ToleranceTable | None = None, create: Callable[[CandidateContext], Any] | None = None,
                      release_reference: bool = False) -> RunResult:
    """Run one candidate against a prepared reference. ``create`` replaces the registered
    candidate's factory (``opts.candidate`` then only names it); ``release_reference`` drops
    the reference model once the candidate is built (a one-shot run needs it no more)."""
    timings = dict(ref.timings)
    if create is None:
        create = backends.load(opts.candidate).create
    # only parity's own torch factory can be the twin (a wrapped or replaced one is not)
    registered = getattr(create, "__module__", None) == "parity.backends.pytorch"
    source, ids, ref_cap, selected = ref.source, ref.ids, ref.capture, ref.selected
    calib = calibration_for(opts, tolerances is not None)
    if calib.calibrated:
        tols = NO_ELEMENT_TOLERANCE
    else:
        tols = tolerances or source.preset.tolerance_table(opts.dtype).override(opts.atol, opts.rtol)
    calib.twin = measure_twin(ref, opts, calib, progress, timings, skip_if_candidate=registered)
    with _stage(progress, f"building candidate ({opts.candidate})", timings):
        cand = create(CandidateContext(opts, source, ref.probe_map, ref.model, ref.device))
    if release_reference:
        ref.model = None
    offered = set(cand.available_probes())
    wanted = [p for p in selected if p in offered]
    cand_cap = Capture(cand.label, cand.describe())
    comparator = Comparator(ref_cap, cand_cap, tols, keep=opts.keep_tensors)
    with _stage(progress, f"running candidate ({opts.candidate})", timings), cand:
        try:
            cand.capture(ids, wanted, comparator)
        except ParityError:
            raise
        except Exception as exc:  # noqa: BLE001 - the candidate's own code failed
            offered = set(cand.available_probes())
            _twin_from_candidate(calib, opts, comparator.diffs, {})
            rows = build_rows(selected, offered, ref_cap, cand_cap, comparator.diffs, tols, calib)
            raise _failed(opts, source, ref.facts, cand, ids, tols, timings, rows, comparator, exc, calib) from exc
        offered = set(cand.available_probes())  # a port's offer is known once it has run
        measured = [p for p in wanted if p in comparator.diffs]
        iso_state, iso_diffs, iso_profiles = _isolation_pass(opts, cand, ids, ref_cap, tols, measured, source.num_blocks)

    _twin_from_candidate(calib, opts, comparator.diffs, iso_diffs)
    rows = build_rows(selected, offered, ref_cap, cand_cap, comparator.diffs, tols, calib)
    add_isolated(rows, iso_diffs, calib)
    facts = run_facts(opts, source, ref.facts, cand.describe(), ids, tols, timings, calib)
    summary = diagnose(rows, cand_cap.meta.get("dtype"), isolated=iso_diffs, profiles=comparator.profiles,
                       isolated_profiles=iso_profiles, calibration=calib)
    summary["isolation"] = iso_state
    report = ReportData(run=facts, probes=rows, summary=summary)
    return RunResult(report, ref_cap, cand_cap, ids)


def _twin_from_candidate(calib: Calibration, opts: RunOptions, diffs: dict[str, DiffStats],
                         iso: dict[str, DiffStats]) -> None:
    """When the candidate is the twin (see candidate_is_twin), its own errors are the floor."""
    if calib.calibrated and calib.twin is None:
        calib.twin = Twin(calib.dtype, "candidate",
                          f"the candidate itself (torch, {calib.dtype}, {opts.attn} attention is the reference run in "
                          "its dtype: the twin's forward was skipped)", dict(diffs), dict(iso))


def add_isolated(rows: list[ProbeRow], iso: dict[str, DiffStats], calib: Calibration) -> None:
    """Each block probe's own (teacher-forced) error, and its excess over the twin's."""
    for r in rows:
        d = iso.get(r.name)
        if d is None:
            continue
        r.isolated_max_abs_err = d.max_abs_err
        x = calib.excess(r.name, d, r.ref_abs_max, isolated=True)
        r.isolated_excess = None if x is None else x.value


def execute(opts: RunOptions, progress: Progress | None = None) -> RunResult:
    backends.load(opts.candidate)  # fail on an unknown candidate before any work
    calibration_for(opts, False)  # and on verdict options that do not fit together
    ref = prepare_reference(opts, progress)
    return compare_candidate(ref, opts, progress, release_reference=True)


def _isolation_pass(opts: RunOptions, cand: Any, ids: list[int], ref_cap: Capture, tols: ToleranceTable,
                    probes: list[str], num_blocks: int) -> tuple[str, dict[str, DiffStats], dict[str, Any]]:
    """(state, isolated diffs, isolated per-token profiles); isolation is extra evidence, never fatal."""
    if not opts.isolate:
        return "off", {}, {}
    if not cand.supports_isolation():
        return "not supported by this candidate", {}, {}
    try:
        diffs, profiles = _isolated(cand, ids, ref_cap, tols, probes, num_blocks)
    except Exception as exc:  # noqa: BLE001
        return f"failed: {type(exc).__name__}: {' '.join(str(exc).split())}", {}, {}
    return ("measured" if diffs else "nothing to isolate"), diffs, profiles


def _isolated(cand: Any, ids: list[int], ref_cap: Capture, tols: ToleranceTable, probes: list[str],
              num_blocks: int) -> tuple[dict[str, DiffStats], dict[str, Any]]:
    """Teacher-forced pass: every block runs on the reference's input of that block."""
    names = isolation_inputs(num_blocks)
    if not all(n in ref_cap for n in names):
        return {}, {}
    block_probes = [p for p in probes if canon.parse(p).block is not None]
    inputs = {i: ref_cap.tensor(n) for i, n in enumerate(names)}
    iso = Comparator(ref_cap, Capture(cand.label + " (isolated)"), tols)
    cand.capture_isolated(ids, inputs, block_probes, iso)
    keep = set(block_probes)
    return {k: v for k, v in iso.diffs.items() if k in keep}, {k: v for k, v in iso.profiles.items() if k in keep}


def _failed(opts: RunOptions, source: ModelSource, ref_facts: dict[str, Any], cand: Any, ids: list[int], tols: ToleranceTable,
            timings: dict[str, float], rows: list[ProbeRow], comparator: Comparator, exc: Exception,
            calib: Calibration) -> CandidateFailed:
    """The error (with a partial report) for a candidate that raised during its forward."""
    text = " ".join(str(exc).split())
    what = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    last = comparator.last
    summary = diagnose(rows, cand.describe().get("dtype"), profiles=comparator.profiles, calibration=calib)
    summary["verdict"] = "error"
    summary["error"] = {"exception": what, "last_probe": last, "probes_compared": len(comparator.diffs)}
    where = f"after probe '{last}'" if last else "before its first probe"
    summary["message"] = f"ERROR | candidate '{opts.candidate}' raised during the forward pass {where} | {what}"
    facts = run_facts(opts, source, ref_facts, cand.describe(), ids, tols, timings, calib)
    report = ReportData(run=facts, probes=rows, summary=summary)
    msg = (f"candidate '{opts.candidate}' raised {what} during the forward pass, {where} "
           f"({len(comparator.diffs)} probes compared).")
    return CandidateFailed(msg, "the partial report holds the probes captured before the failure; --debug shows the traceback", report)


def make_row(name: str, ref: TensorStats, cand: TensorStats, d: DiffStats, tols: ToleranceTable,
             calib: Calibration | None = None) -> ProbeRow:
    calib = calib or Calibration("absolute")
    p = canon.parse(name)
    tol = None if calib.calibrated else tols.lookup(name)
    wi = d.worst_index
    passed = calib.judge(name, d, ref.abs_max)
    x: Excess | None = calib.excess(name, d, ref.abs_max)
    return ProbeRow(
        name=name, block=p.block, component=p.component,
        status="pass" if passed else "fail", passed=passed,
        shape=ref.shape, ref_dtype=ref.dtype, cand_dtype=cand.dtype,
        ref_mean=ref.mean, ref_sum=ref.sum, cand_mean=cand.mean, cand_sum=cand.sum,
        ref_abs_max=ref.abs_max, cand_abs_max=cand.abs_max,
        max_abs_err=d.max_abs_err, mean_abs_err=d.mean_abs_err, max_rel_err=d.max_rel_err,
        cosine=d.cosine, snr_db=d.snr_db, nrmse=d.nrmse,
        nan=cand.nan, inf=cand.inf, ref_nan=ref.nan, ref_inf=ref.inf,
        n_bad=d.n_bad + d.n_nonfinite_mismatch, numel=d.numel,
        worst_index=wi, worst_token=wi[0] if wi else None,
        worst_channel=_channel(wi, ref.shape), worst_ref=d.worst_ref, worst_cand=d.worst_cand,
        fp16_headroom=fp16_headroom(ref.abs_max), atol=None if tol is None else tol.atol,
        rtol=None if tol is None else tol.rtol,
        twin_max_abs_err=None if x is None else x.twin_max_abs_err, twin_nrmse=None if x is None else x.twin_nrmse,
        excess=None if x is None else x.value,
    )


def _channel(index: list[int], shape: list[int]) -> int | None:
    """Flattened position within the token's row ([heads, head_dim] -> one channel)."""
    if len(index) < 2:
        return None
    ch = 0
    for i, dim in zip(index[1:], shape[1:]):
        ch = ch * dim + i
    return ch


def build_rows(selected: list[str], offered: set[str], ref: Capture, cand: Capture,
               diffs: dict[str, DiffStats], tols: ToleranceTable, calib: Calibration | None = None) -> list[ProbeRow]:
    rows = []
    for name in selected:
        p = canon.parse(name)
        if name in diffs:
            rows.append(make_row(name, ref.records[name].stats, cand.records[name].stats, diffs[name], tols, calib))
            continue
        status = "not exposed" if name not in offered else "not captured"
        rows.append(ProbeRow(name=name, block=p.block, component=p.component, status=status, passed=None))
    return rows


def _version(pkg: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def run_facts(opts: RunOptions, source: ModelSource, ref: dict[str, Any], cand: dict[str, Any],
              ids: list[int], tols: ToleranceTable, timings: dict[str, float],
              calib: Calibration | None = None) -> dict[str, Any]:
    import torch

    return {
        "model": source.family.name,
        "source": source.label,
        "checkpoint": str(source.checkpoint) if source.checkpoint else None,
        "preset": None if source.checkpoint else source.family.name,
        "shape": source.shape,
        "seed": source.seed,
        "num_blocks": source.num_blocks,
        "reference": ref,
        "candidate": {**cand, "name": opts.candidate},
        "dtype": opts.dtype,
        "tokens": len(ids),
        "input_ids": ids if len(ids) <= 4096 else None,
        "prompt": opts.prompt,
        "verdict": (calib or Calibration("absolute")).to_dict(),
        "tolerances": None if calib is not None and calib.calibrated else tols.to_dict(),
        "timings_s": timings,
        "versions": {
            "parity": __version__,
            "torch": torch.__version__,
            "transformers": _version("transformers"),
            "python": platform.python_version(),
            "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }

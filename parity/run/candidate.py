"""One candidate against a prepared reference: build it, capture and compare every probe on
arrival, the teacher-forced pass, rows, verdict and diagnosis, ReportData. ``execute`` is
one whole ``parity run``. Data flows one way (docs/contributing/architecture.md): source -> reference capture ->
candidate capture compared on arrival -> rows -> diagnosis -> ReportData. Nothing here renders."""
from __future__ import annotations

import platform
from contextlib import nullcontext
from datetime import datetime, timezone
from typing import Any

from parity import __version__, engines
from parity.capture import probes as canon
from parity.capture.sinks import Capture, Comparator
from parity.compare.diff import DiffStats, TensorStats, fp16_headroom
from parity.compare.tolerances import ToleranceTable
from parity.errors import ParityError
from parity.loading.source import ModelSource
from parity.options import RunOptions
from parity.report.data import ProbeRow, ReportData
from parity.engines.base import Backend
from parity.engines.contract import EngineContext, Factory
from parity.run.common import CandidateFailed, Progress, RunResult, isolated, stage
from parity.run.reference import Reference, prepare_reference
from parity.run.targeted import refine
from parity.run.twin import NO_ELEMENT_TOLERANCE, calibration_for, measure_twin, twin_from_candidate
from parity.verdict.calibrate import Calibration, Excess
from parity.verdict.diagnose import diagnose


def compare_candidate(ref: Reference, opts: RunOptions, progress: Progress | None = None, *,
                      tolerances: ToleranceTable | None = None, create: Factory | None = None,
                      release_reference: bool = False) -> RunResult:
    """Run one candidate against a prepared reference. ``create`` replaces the registered
    candidate's factory (``opts.candidate`` then only names it); ``release_reference`` drops
    the reference model once the candidate is built (a one-shot run needs it no more)."""
    timings = dict(ref.timings)
    if create is None:
        engine = engines.load(opts.candidate)
        opts = engine.prepare(opts, progress)  # idempotent; execute() ran it before the reference was built
        create = engine.create
    # only parity's own torch factory can be the twin (a wrapped or replaced one is not)
    registered = _parity_torch(create)
    source, ids, ref_cap, selected = ref.source, ref.ids, ref.capture, ref.selected
    calib = calibration_for(opts, tolerances is not None)
    if calib.calibrated:
        tols = NO_ELEMENT_TOLERANCE
    else:
        tols = tolerances or source.preset.tolerance_table(opts.dtype).override(opts.atol, opts.rtol)
    calib.twin = measure_twin(ref, opts, calib, progress, timings, skip_if_candidate=registered)
    with stage(progress, f"building candidate ({opts.candidate})", timings):
        cand: Backend = create(EngineContext(opts, source, ref.probe_map, ref.model, ref.device, progress))
    if release_reference and not opts.targeted:  # else kept: the targeted pass reads its weights
        ref.model = None
    offered = set(cand.available_probes())
    wanted = [p for p in selected if p in offered]
    cand_cap = Capture(cand.label, cand.describe())
    comparator = Comparator(ref_cap, cand_cap, tols, keep=opts.keep_tensors)
    with stage(progress, f"running candidate ({opts.candidate})", timings), cand:
        try:
            cand.capture(ids, wanted, comparator)
        except ParityError:
            raise
        except Exception as exc:  # noqa: BLE001 - the candidate's own code failed
            offered = set(cand.available_probes())
            twin_from_candidate(calib, opts, comparator.diffs, {})
            rows = build_rows(selected, offered, ref_cap, cand_cap, comparator.diffs, tols, calib)
            raise _failed(opts, source, ref.facts, cand, ids, tols, timings, rows, comparator, exc, calib) from exc
        offered = set(cand.available_probes())  # a port's offer is known once it has run
        measured = [p for p in wanted if p in comparator.diffs]
        isolating = stage(progress, "isolated pass (every block on the reference's input)", timings) \
            if opts.isolate and cand.supports_isolation() else nullcontext()
        with isolating:
            iso_state, iso_diffs, iso_profiles = _isolation_pass(opts, cand, ids, ref_cap, tols, measured, source.num_blocks)

    twin_from_candidate(calib, opts, comparator.diffs, iso_diffs)
    rows = build_rows(selected, offered, ref_cap, cand_cap, comparator.diffs, tols, calib)
    add_isolated(rows, iso_diffs, calib)
    facts = run_facts(opts, source, ref.facts, cand.describe(), ids, tols, timings, calib)
    summary = diagnose(rows, cand_cap.meta.get("dtype"), isolated=iso_diffs, profiles=comparator.profiles,
                       isolated_profiles=iso_profiles, calibration=calib)
    summary["isolation"] = iso_state
    if hasattr(cand, "annotate"):  # a sharded candidate names the rank a divergence lives on (parity.engines.shards)
        cand.annotate(summary, calib)
    if opts.targeted and opts.candidate != "quant":  # a scheme's error is its cost, not a bug to name
        refine(summary, cand, ref, calib, cand_cap.meta.get("dtype"), progress, timings, opts.isolate)
    if release_reference:
        ref.model = None
    report = ReportData(run=facts, probes=rows, summary=summary)
    if opts.candidate == "quant":  # quantization error is large by design: a budget decides (parity.run.quant)
        from parity.run import quant

        quant.judge(report, opts)
        if opts.quant_sensitivity:
            with stage(progress, "sensitivity sweep (one block, one kind quantized at a time)", timings):
                quant.attach_sensitivity(report, cand, ref_cap, ids, calib, getattr(progress, "update", None))
    return RunResult(report, ref_cap, cand_cap, ids)


def _parity_torch(create: Factory) -> bool:
    """``create`` is parity's own torch factory (the torch engine's, which delegates to its
    runner's ``create`` -- itself, not a replacement of it)."""
    from parity.engines.torch import runner

    if create is engines.info("torch").create:
        create = runner.create
    return getattr(create, "__module__", None) == "parity.engines.torch.runner"


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
    engine = engines.load(opts.candidate)  # fail on an unknown candidate before any work
    opts = engine.prepare(opts, progress)  # what the engine decides (llamacpp: the GGUF file, so the dtype)
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
        diffs, profiles = isolated(cand, ids, ref_cap, tols, probes, num_blocks)
    except Exception as exc:  # noqa: BLE001
        return f"failed: {type(exc).__name__}: {' '.join(str(exc).split())}", {}, {}
    return ("measured" if diffs else "nothing to isolate"), diffs, profiles


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

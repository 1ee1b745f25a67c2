"""The precision twin of a run (parity.verdict.calibrate): the reference model itself in the
candidate's dtype, measured against the reference once per dtype, before any candidate of
the run is built; and the run's verdict settings."""
from __future__ import annotations

import time
from typing import Any

from parity.capture.sinks import Capture, Comparator
from parity.compare.stats import DiffStats
from parity.compare.tolerances import Tolerance, ToleranceTable
from parity.errors import ParityError, UsageError
from parity import dtypes
from parity.options import RunOptions
from parity.run.common import Progress, isolated, stage
from parity.run.reference import Reference, check_weights
from parity.verdict.calibrate import Calibration, Twin, check_budget, resolve_mode

#: the kernel tolerance of calibrated runs: elements are not judged one by one
NO_ELEMENT_TOLERANCE = ToleranceTable(Tolerance(float("inf"), 0.0))



def calibration_for(opts: RunOptions, explicit_tolerances: bool) -> Calibration:
    """The run's verdict settings (mode and budget; the twin comes later), validated."""
    mode = resolve_mode(opts.tolerance, explicit_tolerances or opts.atol is not None or opts.rtol is not None)
    budget = check_budget(opts.budget) if opts.budget is not None else None
    if budget is not None and mode != "calibrated":
        raise UsageError("--budget applies to calibrated verdicts.", note="drop --budget, or use --tolerance calibrated")
    calib = Calibration(mode, dtypes.long_name(opts.dtype))
    if budget is not None:
        calib.budget = budget
    return calib

#: the reference's (and so the twin's) attention implementation (ModelSource.build's default)
REFERENCE_ATTN = "eager"


def candidate_is_twin(opts: RunOptions, ref_attn: str | None) -> bool:
    """The torch candidate with the reference's attention, uncompiled, on the twin's device
    *is* an honest run of the reference in its dtype: the twin's forward would repeat it."""
    return (opts.candidate == "torch" and not scheme_twin(opts) and not opts.compile and opts.attn == REFERENCE_ATTN
            and ref_attn in (None, REFERENCE_ATTN))


def measure_twin(ref: Reference, opts: RunOptions, calib: Calibration, progress: Progress | None,
                 timings: dict[str, float], skip_if_candidate: bool = True) -> Twin | None:
    """The precision twin of ``calib.dtype`` on the run's device (measured once per
    reference): the reference's own weights and code, derived before any candidate of this
    run is built, so nothing a candidate does reaches it. None when the candidate is the twin
    (``skip_if_candidate``): its own errors are the floor (see twin_from_candidate)."""
    if not calib.calibrated:
        return None
    if calib.dtype == "float32" and not scheme_twin(opts):
        return Twin("float32", "reference", "the float32 reference itself (floor: float32 rounding)")
    if skip_if_candidate and candidate_is_twin(opts, ref.facts.get("attn")):
        return None  # filled from the candidate's own diffs (see compare_candidate)
    key = (calib.dtype, ref.device, opts.isolate, opts.twin_gguf, scheme_twin(opts))
    if key in ref.twins:
        return ref.twins[key]
    if ref.model is None:
        raise ParityError("the reference model was released before its precision twin was measured.")
    check_weights(ref)
    from parity.engines.torch.runner import ModuleBackend

    t0 = time.perf_counter()
    with stage(progress, f"running precision twin ({calib.dtype})", timings):
        if scheme_twin(opts):
            model = quant_twin(ref, opts)
            what = (f"the reference in {dtypes.long_name(opts.dtype)} fake-quantized with {opts.quant_twin} "
                    f"(ModelOpt) on {ref.device}, {REFERENCE_ATTN} attention")
        else:
            model, what = twin_model(ref.model, opts, ref.device)
        backend = ModuleBackend(model, ref.probe_map, getattr(model, "config", ref.source.config), "twin",
                                ref.source.num_blocks)
        comparator = Comparator(ref.capture, Capture("twin", backend.describe()), NO_ELEMENT_TOLERANCE)
        with backend:
            backend.capture(ref.ids, ref.selected, comparator)
            diffs = dict(comparator.diffs)
            iso: dict[str, DiffStats] = {}
            if opts.isolate and backend.supports_isolation():
                iso, _ = isolated(backend, ref.ids, ref.capture, NO_ELEMENT_TOLERANCE, ref.selected, ref.source.num_blocks)
        desc = backend.describe()
        del backend, model, comparator
        _free_device_memory(ref.device)
    label = what or f"the reference in {calib.dtype} on {desc.get('device')}, {REFERENCE_ATTN} attention"
    twin = ref.twins[key] = Twin(calib.dtype, "measured", label, diffs, iso, time.perf_counter() - t0)
    return twin


def scheme_twin(opts: RunOptions) -> str | None:
    """The quantization scheme the twin applies (``--quant-twin SCHEME``), if any."""
    twin = getattr(opts, "quant_twin", None)
    return None if twin in (None, "auto", "emulate", "float") else twin


def twin_model(ref_model: Any, opts: Any, device: str) -> tuple[Any, str | None]:
    """The twin's module and, when it is not the plain reference in ``opts.dtype``, what it
    is: with ``opts.twin_gguf`` (a quantized GGUF file, set by the llamacpp candidate) the
    reference in float32 with that file's activation quantization before every matmul
    (parity.engines.llamacpp.actquant), as llama.cpp's kernels do. (``--quant-twin SCHEME``: see
    quant_twin.)"""
    from parity.loading import rows_attention as rows
    from parity.engines.torch.runner import derive, torch_dtype
    from parity.loading.streamed import stream_of

    stream = stream_of(ref_model)
    if stream is not None and not opts.twin_gguf:
        return stream.derive(torch_dtype(opts.dtype), device), (
            f"the reference in {opts.dtype} streamed block by block on {device}, {REFERENCE_ATTN} attention")
    if not opts.twin_gguf:
        model = derive(ref_model, opts.dtype, device, REFERENCE_ATTN)
        rows.apply(model)  # as the reference's: eager, its scores made in blocks of query rows
        return model, None
    from pathlib import Path

    from parity.engines.llamacpp.actquant import quantize_activations, weight_types

    model = derive(ref_model, "fp32", device, REFERENCE_ATTN)
    applied = quantize_activations(model, weight_types(Path(opts.twin_gguf)))
    if not applied:
        raise ParityError(f"no matmul of the reference maps to a quantized tensor of {opts.twin_gguf}.",
                          note="the activation-quantization twin knows the llama/qwen2 module layout")
    kinds = ", ".join(sorted(set(applied.values())))
    return model, (f"the reference in float32 with llama.cpp's activation quantization ({kinds}) before "
                   f"{len(applied)} matmuls, {REFERENCE_ATTN} attention")


def quant_twin(ref: Reference, opts: RunOptions) -> object:
    """The twin of an engine running a quantization scheme (``--quant-twin S``): the reference
    with S applied by ModelOpt (parity.engines.quant.runner.quantized_reference)."""
    from parity.engines.quant import runner as quant

    spec = ref.probe_map.block_spec()
    if spec is None:
        raise UsageError("--quant-twin needs a probe map with a [block] section.")
    calib, _ = quant.calibration_ids(ref.source, opts.tokenizer)
    model, _ = quant.quantized_reference(ref.model, scheme_twin(opts) or "", dtype=opts.dtype, device=ref.device,
                                         block_module=spec.module, calibration=calib)
    return model


def _free_device_memory(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def twin_from_candidate(calib: Calibration, opts: RunOptions, diffs: dict[str, DiffStats],
                         iso: dict[str, DiffStats]) -> None:
    """When the candidate is the twin (see candidate_is_twin), its own errors are the floor."""
    if calib.calibrated and calib.twin is None:
        calib.twin = Twin(calib.dtype, "candidate",
                          f"the candidate itself (torch, {calib.dtype}, {opts.attn} attention is the reference run in "
                          "its dtype: the twin's forward was skipped)", dict(diffs), dict(iso))

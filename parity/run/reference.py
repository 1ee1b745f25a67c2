"""The reference side of a run: the float32 model built from the source, its capture of
every selected probe (kept for the candidates and the teacher-forced pass), and a digest of
its weights that later derivations check."""
from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from parity.capture import probes as canon
from parity.capture.probemap import ProbeMap, find_map
from parity.capture.sinks import Capture, Recorder
from parity.errors import InputError, ParityError, UsageError
from parity.loading.inputs import resolve_inputs
from parity.loading.source import ModelSource
from parity.options import RunOptions
from parity.run.common import Progress, isolation_inputs, stage
from parity.run.stream import build_reference, peak_gib, peak_start
from parity.verdict.calibrate import Twin


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
    if opts.tp and opts.candidate != "tp":
        raise UsageError(f"--tp N shards the torch candidate; it does not combine with --candidate {opts.candidate}.",
                         note="drop --candidate (or --tp)")
    if generation and getattr(opts, "stream_reference", False):
        raise UsageError("--stream-reference streams one forward pass (parity run); parity generate runs the whole reference.")
    if opts.tp and generation:
        raise UsageError("--tp compares one forward pass (parity run); parity generate does not shard its candidate.")
    tp = [s for s in specs if s.fault.target == "tp"]
    if tp and not opts.tp:
        raise UsageError(f"fault '{tp[0].fault.name}' alters one rank's shard: it needs --tp N (N >= 2).")
    if opts.tp and any(s.fault.target == "model" for s in specs):
        raise UsageError("model faults change the reference's weights; the --tp ranks load theirs from the source.",
                         note="drop --tp, or the model fault")
    gguf = [s for s in specs if s.fault.target == "gguf"]
    if gguf and opts.candidate != "llamacpp":
        raise UsageError(f"fault '{gguf[0].fault.name}' alters the GGUF file llama.cpp runs: it needs --candidate llamacpp.")
    if opts.candidate != "port":
        wrong = [s for s in specs if s.fault.target == "port"]
        if wrong:
            raise UsageError(f"fault '{wrong[0].fault.name}' alters the built-in port: it needs --candidate port.",
                             note="model faults (" + ", ".join(n for n, f in faults.FAULTS.items() if f.target not in ("port", "gguf"))
                             + ") work with any candidate")
    return specs


def gpu_keep_bytes(tokens: int) -> int:
    """GPU memory the reference may keep probe tensors in: $PARITY_GPU_KEEP_GIB, by default
    1.5 GiB up to 512 tokens and proportionally less beyond (the same number of probes: at
    4096 tokens a probe is 8x larger, the forward is long enough to hide copies, and memory
    is what runs out). The rest go to pinned host memory and are copied back probe by probe."""
    import os

    raw = os.environ.get("PARITY_GPU_KEEP_GIB")
    if raw is None:
        return int(1.5 * 2**30 * min(1.0, 512 / max(1, tokens)))
    try:
        return int(float(raw) * 2**30)
    except ValueError:
        raise UsageError(f"PARITY_GPU_KEEP_GIB={raw!r} is not a number.") from None


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
    from parity.engines.torch.runner import ModuleBackend, check_device, torch_dtype

    timings: dict[str, float] = {}
    torch_dtype(opts.dtype)  # validate before any work
    device = check_device(opts.device)
    ref_device = check_device(opts.ref_device or device)
    source = ModelSource.resolve(opts.model, opts.checkpoint, opts.seed, opts.trust_remote_code, opts.shape,
                                  activations=opts.activations, family_dirs=opts.family_dirs)
    fault_specs = check_port_options(opts, source.num_blocks)
    pmap = find_map(source.probe_map_name, opts.probe_dirs)
    all_names = pmap.names(source.num_blocks)
    selected = canon.select(all_names, opts.probes)
    forcing = set(isolation_inputs(source.num_blocks)) & set(all_names) if opts.isolate else set()
    ref_probes = canon.in_order(set(selected) | forcing)  # teacher forcing needs the block inputs
    ids = resolve_inputs(opts, source)

    peak_start(ref_device)  # the reference's peak device memory covers its build and its pass
    with stage(progress, "building reference", timings):
        ref_model, streamed = build_reference(opts, source, pmap, ref_device, fault_specs)
        for spec in (s for s in fault_specs if s.fault.target == "model"):  # weights both sides load
            spec.fault.apply(ref_model, spec, SimpleNamespace(num_blocks=source.num_blocks, probe_map=pmap, config=source.config))
    reference = ModuleBackend(ref_model, pmap, getattr(ref_model, "config", source.config), "reference", source.num_blocks)
    ref_cap = Capture("reference", reference.describe())
    with stage(progress, "running reference", timings), reference:
        reference.capture(ids, ref_probes, Recorder(ref_cap, keep=True, store_device="cpu",
                                                    gpu_budget_bytes=gpu_keep_bytes(len(ids))))
    check_finite(ref_cap)
    facts = {**reference.describe(), "trust_remote_code": source.trust_remote_code}
    if streamed is not None:
        facts["streamed"] = {**streamed, "peak_gpu_gib": peak_gib(ref_device)}
    if source.remote_shims is not None:
        facts["remote_shims"] = source.remote_shims
    return Reference(opts, source, pmap, selected, ids, ref_model, facts, ref_cap, device, timings,
                     digest=None if streamed is not None else weights_digest(ref_model))


def check_finite(cap: Capture) -> None:
    """A reference that produces NaN is no reference: NaN on both sides would compare as
    equal, and a broken model would pass. (Inf, e.g. an activation beyond float16 in a float16
    reference, is judged per probe.)"""
    for name, rec in cap.records.items():
        if rec.stats.nan:
            raise InputError(f"the reference produces NaN at '{name}' ({rec.stats.nan} values): its weights or "
                             "inputs hold NaN, or it overflows.", note="parity compares against a finite float32 "
                             "reference; check the checkpoint (a NaN weight) and the inputs")


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

"""Whether a run's reference streams block by block (parity.loading.streamed), and building it.

A reference streams when asked (``--stream-reference``) or when its float32 weights plus the
copy a candidate or the precision twin makes in the run's dtype do not fit the free memory of
the reference's device; the run facts say which and why (``reference.streamed``). Peak device
memory is then about one unit's weights (a block, or the embedding / LM head when larger) plus
activations, whatever the model's size.
"""
from __future__ import annotations

from typing import Any

from parity.errors import UsageError
from parity.options import RunOptions

_GIB = 1 << 30
#: candidates that copy the reference's weights onto the run's device in the run's dtype
COPYING = ("torch", "port", "cleanroom")
#: candidates that take a streamed reference: a whole copy made parameter by parameter (torch,
#: port), their own weights (tp, cleanroom) or none (dump). The others export, quantize or
#: convert the whole reference module.
STREAM_READY = ("torch", "port", "tp", "dump", "cleanroom")
_ITEMSIZE = {"fp32": 4, "fp16": 2, "bf16": 2, "float32": 4, "float16": 2, "bfloat16": 2}


def stream_reason(opts: RunOptions, source: Any, device: str) -> str | None:
    """Why the reference streams (None: it is built whole)."""
    from parity.loading.limits import available_bytes, weight_bytes

    asked = bool(getattr(opts, "stream_reference", False))
    if source.trust_remote_code and source.checkpoint is not None:
        if asked:
            raise UsageError("--stream-reference cannot stream a checkpoint's own modeling code (--trust-remote-code).",
                             note="drop one of the two")
        return None
    if getattr(source, "activations", "plain") != "plain":
        if asked:
            raise UsageError(f"--activations {source.activations} calibrates what it plants with a forward over the whole "
                             "model; a streamed reference cannot plant it.", note="drop --stream-reference")
        return None
    if opts.candidate not in STREAM_READY:
        if asked:
            raise UsageError(f"--candidate {opts.candidate} builds from the whole reference module, which a streamed "
                             "reference does not hold.", note="drop --stream-reference; candidates that take one: "
                             + ", ".join(STREAM_READY))
        return None
    if asked:
        return "asked (--stream-reference)"
    fp32 = weight_bytes(source.config_dict)
    copy = fp32 * _ITEMSIZE.get(opts.dtype, 2) // 4 if opts.candidate in COPYING else 0
    free = available_bytes(device)
    if fp32 + copy <= free:
        return None
    what = f"{fp32 / _GIB:.1f} GiB of float32 weights" + (f" + {copy / _GIB:.1f} GiB for the {opts.dtype} copy" if copy else "")
    return f"automatic: {what} > {free / _GIB:.1f} GiB free on {device}"


def build_reference(opts: RunOptions, source: Any, probe_map: Any, device: str, fault_specs: list[Any]) -> tuple[Any, dict[str, Any] | None]:
    """The reference module and, when it streams, the facts saying so (else None)."""
    reason = stream_reason(opts, source, device)
    if reason is None:
        return source.build(device), None
    model_faults = [s for s in fault_specs if s.fault.target == "model"]
    if model_faults:
        raise UsageError(f"fault '{model_faults[0].fault.name}' changes the reference's weights, which a streamed "
                         "reference does not hold.", note="drop --stream-reference for a model that fits")
    spec = probe_map.block_spec()
    if spec is None:
        raise UsageError(f"probe map '{probe_map.name}' has no block module: the reference cannot stream.")
    from parity.loading.streamed import stream_of, streamed_model

    model = streamed_model(source, device, spec.module)
    stream = stream_of(model)
    assert stream is not None
    return model, {"why": reason, **stream.describe()}


def peak_start(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: str) -> float | None:
    """Peak memory allocated on ``device`` since peak_start (GiB), None off the GPU."""
    if not device.startswith("cuda"):
        return None
    import torch

    torch.cuda.synchronize(device)
    return round(torch.cuda.max_memory_allocated(device) / _GIB, 3)

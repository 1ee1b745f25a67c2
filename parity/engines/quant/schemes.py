"""Quantization schemes of the ``quant`` candidate: names, what each quantizes, where it
runs, and its default pass/fail budget. Light on purpose (no torch, no ModelOpt): the CLI
checks ``--quant`` against this table before anything heavy is imported; the ModelOpt
configs themselves are built in :mod:`parity.engines.quant.runner`.

Which ModelOpt 0.47 configs run on a CPU (measured on SmolLM2-135M, torch 2.13 CPU):
integer fake quantization (int8/int4, per channel or per 128-group, AWQ, SmoothQuant, the
int8 KV cache) uses ModelOpt's pure-PyTorch path; FP8 (E4M3) rounds through
``torch.float8_e4m3fn`` (ModelOpt's eager path), which exists on CPU too -- the numerics of
the scheme, not of a particular FP8 GEMM. NVFP4 (dynamic per-16 block scales) asserts
a CUDA tensor and needs ModelOpt's CUDA extension: ``needs_cuda``.

Budgets are on the logits' nrmse (RMS error over the reference logits' RMS) against the
float32 reference: quantization error is large by design, so the precision twin's ×4 is no
yardstick for it; the budget says how much a scheme may cost. The defaults are a judgment:
roughly the error at which greedy outputs of a small chat model still mostly agree with the
reference's. Measured on SmolLM2-135M-Instruct (CPU, ModelOpt 0.47;
docs/guide/quantization.md): int8-wo 0.038 (ROUGE-L vs reference 95), int8-kv 0.036 (94),
fp8 0.128 (79), w8a8-sq 0.43 (28: over its 0.3), int4-wo 0.68 (47: over its 0.5).
``--quant-budget`` overrides them.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from parity.errors import UsageError

#: component kinds a scheme can quantize, in the canonical vocabulary of --quant-exclude
KINDS = ("attn", "mlp", "kv")


@dataclass(frozen=True)
class Scheme:
    name: str
    summary: str
    kinds: tuple[str, ...]  # which component kinds it quantizes
    budget: float  # default logits nrmse budget vs the float32 reference
    needs_cuda: bool = False
    #: runs the calibration set through the model (weight-only max scales need the weights only:
    #: ModelOpt calibrates them without a forward loop)
    calibrates: bool = True

    @property
    def weight_only(self) -> bool:
        return self.name.endswith("-wo") or self.name == "int4-awq"


SCHEMES: dict[str, Scheme] = {s.name: s for s in (
    Scheme("int8-wo", "int8 weight-only, per output channel (ModelOpt INT8_WEIGHT_ONLY_CFG)", ("attn", "mlp"), 0.05,
           calibrates=False),
    Scheme("int4-wo", "int4 weight-only, per group of 128 (ModelOpt INT4_BLOCKWISE_WEIGHT_ONLY_CFG)", ("attn", "mlp"), 0.5,
           calibrates=False),
    Scheme("int4-awq", "int4 weight-only, groups of 128, AWQ-lite scales (ModelOpt INT4_AWQ_CFG)", ("attn", "mlp"), 0.5),
    Scheme("w8a8-sq", "int8 weights and activations with SmoothQuant (ModelOpt INT8_SMOOTHQUANT_CFG)", ("attn", "mlp"), 0.3),
    Scheme("fp8", "FP8 E4M3 weights and activations, per tensor (ModelOpt FP8_DEFAULT_CFG)", ("attn", "mlp"), 0.2),
    Scheme("int8-kv", "int8 KV cache, per tensor (ModelOpt's k/v bmm quantizers, 8 bits)", ("kv",), 0.1),
    Scheme("fp8-kv", "FP8 E4M3 KV cache, per tensor (ModelOpt FP8_KV_CFG)", ("kv",), 0.2),
    Scheme("nvfp4", "NVFP4 weights and activations, blocks of 16 (ModelOpt NVFP4_DEFAULT_CFG)", ("attn", "mlp"), 0.5,
           needs_cuda=True),
)}
#: the schemes of ``parity quant-sweep`` (the seed's ablation), in its order
SWEEP = ("int8-wo", "int4-wo", "int8-kv", "w8a8-sq", "fp8")


def get(name: str) -> Scheme:
    try:
        return SCHEMES[name]
    except KeyError:
        raise UsageError(f"unknown quantization scheme '{name}'.", note="valid schemes: " + ", ".join(SCHEMES)) from None


def check_device(scheme: Scheme, device: str) -> None:
    """A scheme that needs CUDA on a CPU device: exit 2 naming both."""
    if scheme.needs_cuda and not device.startswith("cuda"):
        raise UsageError(f"scheme '{scheme.name}' needs CUDA: ModelOpt's {scheme.name} fake quantization runs only on a "
                         f"CUDA GPU, and the device here is {device}.",
                         note="CPU schemes: " + ", ".join(n for n, s in SCHEMES.items() if not s.needs_cuda))


def unit_matches(unit: str, patterns: list[str] | tuple[str, ...]) -> bool:
    """Does a quantized unit (``blocks.3.attn.q_proj``, ``blocks.3.kv.k``, ``lm_head``) match
    one of the globs? ``blocks.3`` matches the whole block, ``blocks.*.mlp`` a kind."""
    for p in patterns:
        if fnmatch.fnmatchcase(unit, p) or fnmatch.fnmatchcase(unit, p + ".*"):
            return True
    return False

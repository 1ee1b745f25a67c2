"""The ``quant`` engine: the reference weights fake-quantized by NVIDIA ModelOpt
(``--quant SCHEME``; the schemes: parity.engines.quant.schemes)."""
from __future__ import annotations

import math

from parity.engines.contract import Engine, needs_candidate, runner_create
from parity.errors import UsageError
from parity.options import Opt, RunOptions


def check(opts: RunOptions) -> None:
    """--quant, --quant-twin and --quant-budget before any model is built: an unknown scheme,
    or one that needs CUDA on a CPU device, is exit 2."""
    from parity.engines.quant import schemes

    quant, twin = opts.quant, opts.quant_twin
    if opts.candidate == "quant" and not quant:
        raise UsageError("--candidate quant needs --quant SCHEME.", note="schemes: " + ", ".join(schemes.SCHEMES))
    if quant and opts.candidate != "quant":
        raise UsageError("--quant needs --candidate quant.", note="an engine running a scheme: --quant-twin SCHEME")
    if opts.quant_exclude and opts.candidate != "quant":
        raise UsageError("--quant-exclude needs --candidate quant.", note="add --candidate quant --quant SCHEME")
    needs_candidate(opts, (("--sensitivity", "quant_sensitivity"),), "quant")
    budget = opts.quant_budget
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise UsageError(f"--quant-budget {budget}: need a finite number > 0 (a logits nrmse).", note="e.g. --quant-budget 0.05")
    if twin and twin not in ("auto", "emulate", "float") and twin not in schemes.SCHEMES:
        raise UsageError(f"--quant-twin {twin}: not a twin.",
                         note="auto, emulate (llama.cpp's activation quantization), float, or a scheme: "
                              + ", ".join(schemes.SCHEMES))
    for name in (quant, None if twin in ("auto", "emulate", "float") else twin):
        if name:
            scheme = schemes.get(name)
            if scheme.needs_cuda:
                schemes.check_device(scheme, _resolved_device(opts.device))


def _resolved_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


ENGINE = Engine(
    name="quant",
    summary="the reference weights fake-quantized by NVIDIA ModelOpt (--quant int8-wo|int4-wo|int4-awq|w8a8-sq|fp8|int8-kv|fp8-kv|nvfp4)",
    requires=("torch", "modelopt"),
    install="pip install 'parity-debugger[quant]'",
    create=runner_create("parity.engines.quant.runner"),
    check=check,
    flags=(
        Opt(("--quant",), {"metavar": "SCHEME", "help": "with --candidate quant: int8-wo, int4-wo, int4-awq, w8a8-sq, fp8, int8-kv, fp8-kv, nvfp4 (ModelOpt fake quantization)"}),
        Opt(("--quant-exclude",), {"action": "append", "default": [], "metavar": "GLOB", "help": "units kept unquantized, repeatable: 'blocks.0.*', 'blocks.*.mlp', 'blocks.*.kv'"}),
        Opt(("--quant-budget",), {"type": float, "metavar": "X", "help": "pass/fail budget of a quantized candidate: logits nrmse vs the float32 reference (default: the scheme's)"}),
        Opt(("--sensitivity",), {"dest": "quant_sensitivity", "action": "store_true", "help": "with --candidate quant: also quantize one block / one component kind at a time and rank blocks by the logits error"}),
    ),
)

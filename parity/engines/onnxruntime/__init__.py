"""The ``onnxruntime`` engine: the reference exported to ONNX with every probe marked as a
graph output, run in ONNX Runtime."""
from __future__ import annotations

import argparse

from parity.engines.contract import Engine, runner_create
from parity.errors import UsageError
from parity.options import Opt, RunOptions


def check(opts: RunOptions) -> None:
    """--ort-opt / --ort-provider away from their defaults need this candidate."""
    for flag, value, default in (("--ort-opt", opts.ort_opt, "all"), ("--ort-provider", opts.ort_provider, "CPUExecutionProvider")):
        if value not in (default, None) and opts.candidate != "onnxruntime":
            raise UsageError(f"{flag} needs --candidate onnxruntime (it does nothing with --candidate {opts.candidate}).",
                             note=f"add --candidate onnxruntime, or drop {flag}")


ENGINE = Engine(
    name="onnxruntime",
    summary="the reference exported to ONNX (probes marked as outputs), run in ONNX Runtime",
    requires=("onnx", "onnxruntime", "onnxscript"),
    install="pip install 'parity-debugger[onnx]'",
    create=runner_create("parity.engines.onnxruntime.runner"),
    check=check,
    flags=(
        Opt(("--ort-opt",), {"default": "all", "choices": ["disable", "basic", "extended", "all"], "help": "ONNX Runtime graph optimization level (default: all)"}),
        Opt(("--ort-provider",), {"default": "CPUExecutionProvider", "metavar": "EP", "help": "ONNX Runtime execution provider (default: CPUExecutionProvider)"}),
        Opt(("--ort-fault",), {"action": "append", "metavar": "TARGET*SCALE", "help": argparse.SUPPRESS}),
    ),
)

"""The ``onnxruntime`` engine: the reference exported to ONNX with every probe marked as a
graph output, run in ONNX Runtime."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from parity.engines.contract import Engine, EngineContext
from parity.options import Opt

if TYPE_CHECKING:
    from parity.engines.base import Backend


def create(ctx: EngineContext) -> Backend:
    from parity.engines.onnxruntime import runner

    return runner.create(ctx)


ENGINE = Engine(
    name="onnxruntime",
    summary="the reference exported to ONNX (probes marked as outputs), run in ONNX Runtime",
    requires=("onnx", "onnxruntime", "onnxscript"),
    install="pip install 'parity-debugger[onnx]'",
    create=create,
    flags=(
        Opt(("--ort-opt",), {"default": "all", "choices": ["disable", "basic", "extended", "all"], "help": "ONNX Runtime graph optimization level (default: all)"}),
        Opt(("--ort-provider",), {"default": "CPUExecutionProvider", "metavar": "EP", "help": "ONNX Runtime execution provider (default: CPUExecutionProvider)"}),
        Opt(("--ort-fault",), {"action": "append", "metavar": "TARGET*SCALE", "help": argparse.SUPPRESS}),
    ),
)

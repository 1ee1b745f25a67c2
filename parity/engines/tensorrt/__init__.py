"""The ``tensorrt`` engine: the probe-marked ONNX export parsed and built by TensorRT."""
from __future__ import annotations

from typing import TYPE_CHECKING

from parity.engines.contract import Engine, EngineContext

if TYPE_CHECKING:
    from parity.engines.base import Backend


def create(ctx: EngineContext) -> Backend:
    from parity.engines.tensorrt import runner

    return runner.create(ctx)


ENGINE = Engine(
    name="tensorrt",
    summary="the same probe-marked ONNX parsed and built by TensorRT (needs a CUDA GPU)",
    requires=("onnx", "onnxscript", "tensorrt"),
    install="pip install 'parity-debugger[onnx]' tensorrt (NVIDIA's index; a CUDA GPU)",
    create=create,
)

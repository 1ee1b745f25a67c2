"""The ``tensorrt`` engine: the probe-marked ONNX export parsed and built by TensorRT."""
from __future__ import annotations

from parity.engines.contract import Engine, runner_create


ENGINE = Engine(
    name="tensorrt",
    summary="the same probe-marked ONNX parsed and built by TensorRT (needs a CUDA GPU)",
    requires=("onnx", "onnxscript", "tensorrt"),
    install="pip install 'parity-debugger[onnx]' tensorrt (NVIDIA's index; a CUDA GPU)",
    create=runner_create("parity.engines.tensorrt.runner"),
)

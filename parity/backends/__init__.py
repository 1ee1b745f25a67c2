"""Backends: things that run a model and report probe tensors to a sink.

The registry maps a candidate name to the module that implements it; modules are
imported only when that backend is used (``load``), so a missing optional engine never
breaks ``import parity`` or the CLI.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from parity.errors import BackendError


@dataclass(frozen=True)
class BackendInfo:
    name: str
    module: str
    requires: tuple[str, ...]
    summary: str

    def is_available(self) -> bool:
        """True when every required package can be imported (without importing it)."""
        return all(importlib.util.find_spec(p) is not None for p in self.requires)

    def missing(self) -> list[str]:
        return [p for p in self.requires if importlib.util.find_spec(p) is None]


CANDIDATES: dict[str, BackendInfo] = {
    "torch": BackendInfo(
        "torch", "parity.backends.pytorch", ("torch",),
        "the reference weights in another dtype / device / attention implementation",
    ),
    "onnxruntime": BackendInfo(
        "onnxruntime", "parity.backends.onnxrt", ("onnx", "onnxruntime", "onnxscript"),
        "the reference exported to ONNX (probes marked as outputs), run in ONNX Runtime",
    ),
    "tensorrt": BackendInfo(
        "tensorrt", "parity.backends.tensorrt", ("onnx", "onnxscript", "tensorrt"),
        "the same probe-marked ONNX parsed and built by TensorRT (needs a CUDA GPU)",
    ),
    "trtllm": BackendInfo(
        "trtllm", "parity.backends.trtllm", ("tensorrt_llm",),
        "TensorRT-LLM's PyTorch backend, hooked through a trtllm_<family> probe map",
    ),
    "llamacpp": BackendInfo(
        "llamacpp", "parity.backends.llamacpp", ("llama_cpp", "gguf"),
        "a GGUF file run by llama.cpp (llama-cpp-python), probes from its graph's eval callback",
    ),
    "dump": BackendInfo(
        "dump", "parity.backends.dump", ("safetensors",),
        "tensors dumped by any runtime (--dump DIR): parity dumps, tllm_debug/ .npy, rank<N>/*.pt",
    ),
    "cleanroom": BackendInfo(
        "cleanroom", "parity.backends.cleanroom", ("torch",),
        "parity's own implementation of the family (clean-room Qwen v1; transformers' class for the others) loaded "
        "from the same checkpoint: the cross-check of a --trust-remote-code reference",
    ),
    "quant": BackendInfo(
        "quant", "parity.backends.quant", ("torch", "modelopt"),
        "the reference weights fake-quantized by NVIDIA ModelOpt (--quant int8-wo|int4-wo|int4-awq|w8a8-sq|fp8|int8-kv|fp8-kv|nvfp4)",
    ),
    "port": BackendInfo(
        "port", "parity.backends.port", ("torch",),
        "a PyTorch port (--port FILE.py:factory, or the family's built-in engine-style port with --fault)",
    ),
}


def info(name: str) -> BackendInfo:
    try:
        return CANDIDATES[name]
    except KeyError:
        raise BackendError(
            f"unknown candidate '{name}'.", note="valid candidates: " + ", ".join(CANDIDATES)
        ) from None


def load(name: str):  # noqa: ANN201 - returns a module
    bi = info(name)
    if not bi.is_available():
        raise BackendError(
            f"candidate '{name}' needs {', '.join(bi.missing())}, which is not installed.",
            note="`parity doctor` lists what is available here",
        )
    return importlib.import_module(bi.module)

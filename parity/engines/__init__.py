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
    install: str = ""  # how to get what is missing, for the "not installed" line's Note

    def install_note(self) -> str:
        return self.install or "`parity doctor` lists what is available here"

    def is_available(self) -> bool:
        """True when every required package can be imported (without importing it)."""
        return all(importlib.util.find_spec(p) is not None for p in self.requires)

    def missing(self) -> list[str]:
        return [p for p in self.requires if importlib.util.find_spec(p) is None]


CANDIDATES: dict[str, BackendInfo] = {
    "torch": BackendInfo(
        "torch", "parity.engines.pytorch", ("torch",),
        "the reference weights in another dtype / device / attention implementation",
    ),
    "onnxruntime": BackendInfo(
        "onnxruntime", "parity.engines.onnxrt", ("onnx", "onnxruntime", "onnxscript"),
        "the reference exported to ONNX (probes marked as outputs), run in ONNX Runtime",
        "pip install 'parity-debugger[onnx]'",
    ),
    "tensorrt": BackendInfo(
        "tensorrt", "parity.engines.tensorrt", ("onnx", "onnxscript", "tensorrt"),
        "the same probe-marked ONNX parsed and built by TensorRT (needs a CUDA GPU)",
        "pip install 'parity-debugger[onnx]' tensorrt (NVIDIA's index; a CUDA GPU)",
    ),
    "trtllm": BackendInfo(
        "trtllm", "parity.engines.trtllm", ("tensorrt_llm",),
        "TensorRT-LLM's PyTorch backend, hooked through a trtllm_<family> probe map",
        "install tensorrt_llm from NVIDIA's index on a CUDA machine; or dump its tensors and use --candidate dump",
    ),
    "llamacpp": BackendInfo(
        "llamacpp", "parity.engines.llamacpp", ("llama_cpp", "gguf"),
        "a GGUF file run by llama.cpp (llama-cpp-python), probes from its graph's eval callback",
        "`make llamacpp` (or pip install 'parity-debugger[llamacpp]'): pip compiles llama.cpp, ~4-15 min on 2 cores",
    ),
    "dump": BackendInfo(
        "dump", "parity.engines.dump", ("safetensors",),
        "tensors dumped by any runtime (--dump DIR): parity dumps, tllm_debug/ .npy, rank<N>/*.pt",
    ),
    "cleanroom": BackendInfo(
        "cleanroom", "parity.engines.cleanroom", ("torch",),
        "parity's own implementation of the family (clean-room Qwen v1; transformers' class for the others) loaded "
        "from the same checkpoint: the cross-check of a --trust-remote-code reference",
    ),
    "quant": BackendInfo(
        "quant", "parity.engines.quant", ("torch", "modelopt"),
        "the reference weights fake-quantized by NVIDIA ModelOpt (--quant int8-wo|int4-wo|int4-awq|w8a8-sq|fp8|int8-kv|fp8-kv|nvfp4)",
        "pip install 'parity-debugger[quant]'",
    ),
    "tp": BackendInfo(
        "tp", "parity.engines.tp", ("torch",),
        "the torch candidate sharded over --tp N processes as TensorRT-LLM shards it (NCCL on GPUs, gloo on the CPU)",
    ),
    "port": BackendInfo(
        "port", "parity.engines.port", ("torch",),
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
            note=bi.install_note(),
        )
    return importlib.import_module(bi.module)

"""The ``trtllm`` engine: TensorRT-LLM's PyTorch backend, hooked through a ``trtllm_<family>``
probe map (``tensorrt_engine``: probes of an engine built by TensorRT-LLM's TensorRT path)."""
from __future__ import annotations

from parity.engines.contract import Engine, needs_candidate, runner_create
from parity.options import Opt, RunOptions


def check(opts: RunOptions) -> None:
    needs_candidate(opts, (("--trtllm-map", "trtllm_map"),), "trtllm")


ENGINE = Engine(
    name="trtllm",
    summary="TensorRT-LLM's PyTorch backend, hooked through a trtllm_<family> probe map",
    requires=("tensorrt_llm",),
    install="install tensorrt_llm from NVIDIA's index on a CUDA machine; or dump its tensors and use --candidate dump",
    create=runner_create("parity.engines.trtllm.runner"),
    check=check,
    flags=(
        Opt(("--trtllm-map",), {"metavar": "NAME|TOML", "help": "--candidate trtllm: probe map for the TensorRT-LLM model (default: trtllm_<family>)"}),
    ),
)

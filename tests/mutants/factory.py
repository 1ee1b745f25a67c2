"""A ``--port`` factory building the built-in engine port of a family with one mutant applied.

The mutant (tests/mutants/generate.py) is compiled as a module of its own; the clean port is
built as usual, then the mutated classes replace the clean ones on one layer's module only
(attention, MLP, one norm, the decoder layer) or on the whole port (rotary table, the model's
forward). What to apply is read from :data:`CURRENT` (set by the runner, in-process)."""
from __future__ import annotations

import sys
import types
from typing import Any

import torch

from parity.models import engine
from parity.models.llama import port as llama_port
from parity.models.qwen import port as qwen_port

# parity loads a --port file as a fresh module each run: the state lives in one holder module
_HOLDER = sys.modules.setdefault("_parity_mutant_state", types.ModuleType("_parity_mutant_state"))
#: {"source": mutated engine source, "function": qualname, "layer": int, "norm": "input"|"post"|"final"}
CURRENT: dict[str, Any] = _HOLDER.__dict__.setdefault("current", {})
_COMPILED: dict[str, types.ModuleType] = _HOLDER.__dict__.setdefault("compiled", {})


def compiled(source: str) -> types.ModuleType:
    if source not in _COMPILED:
        mod = types.ModuleType(f"parity_mutant_{len(_COMPILED)}")
        mod.__dict__["__file__"] = engine.__file__
        sys.modules[mod.__name__] = mod  # dataclasses look their module up
        exec(compile(source, f"<mutant {len(_COMPILED)}>", "exec"), mod.__dict__)  # noqa: S102 - our own mutant
        _COMPILED[source] = mod
    return _COMPILED[source]


def clean_port(config: Any, sd: dict[str, torch.Tensor]) -> engine.EnginePort:
    if "transformer.wte.weight" in sd:
        return qwen_port.build_port(config, sd)
    pc = llama_port.port_config(config)
    pc.qkv_bias = "model.layers.0.self_attn.q_proj.bias" in sd  # qwen2: q/k/v biases
    return engine.EnginePort.from_fused(pc, llama_port.convert(sd, pc.num_layers))


def apply(port: engine.EnginePort, source: str, function: str, layer: int, norm: str = "input") -> None:
    mod = compiled(source)
    owner = function.split(".")[0]
    block = port.model.layers[layer]
    if owner in ("rotate_half", "apply_rotary", "attention", "FusedQKVAttention"):
        block.self_attn.__class__ = mod.FusedQKVAttention
    elif owner == "GatedMLP":
        block.mlp.__class__ = mod.GatedMLP
    elif owner == "FusedAddRMSNorm":
        target = {"input": block.input_layernorm, "post": block.post_attention_layernorm, "final": port.model.norm}[norm]
        target.__class__ = mod.FusedAddRMSNorm
    elif owner == "DecoderLayer":
        block.__class__ = mod.DecoderLayer
    elif owner == "RotaryTable":
        port.rope = mod.RotaryTable(port.rope.dim, port.rope.base, port.rope.cos.shape[0])
    elif owner == "EnginePort":
        port.__class__ = mod.EnginePort
    else:
        raise ValueError(f"no place for a mutant of {function}")


def build(config: Any, state_dict: dict[str, torch.Tensor]) -> engine.EnginePort:
    port = clean_port(config, state_dict)
    if CURRENT:
        apply(port, CURRENT["source"], CURRENT["function"], CURRENT["layer"], CURRENT.get("norm", "input"))
    return port

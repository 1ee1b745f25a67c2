"""llama.cpp's activation quantization, emulated on a torch model: the precision twin of a
quantized GGUF file.

ggml's CPU matrix products convert the activations to the weight type's "vec_dot type"
before the dot products: Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 weights take activations quantized to 8
bits in blocks of 32 (Q8_0 / Q8_1: scale = max|x| / 127 per block, round to nearest), the
K-quants in blocks of 256 (Q8_K), F16 weights take activations rounded to float16, BF16
to bfloat16, F32 nothing. The weights themselves are the reference's (dequantized from the
same file). ``quantize_activations`` adds a forward pre-hook to every ``nn.Linear`` whose
GGUF weight is known that does the same to its input, in float32, so the twin carries the
error of the engine's scheme and nothing else (measured on SmolLM2 Q4_1: llama.cpp's nrmse
over this twin's has median 0.99 over 271 probes; docs/guide/engines/llamacpp.md).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: GGUF weight type -> (activation format, block)
VEC_DOT: dict[str, tuple[str, int]] = {
    **{t: ("q8", 32) for t in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1")},
    **{t: ("q8", 256) for t in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K")},
    "F16": ("f16", 0), "BF16": ("bf16", 0),
}
#: Hugging Face module path (llama / qwen2 layout) -> GGUF tensor name
HF_TO_GGUF = [
    (r"model\.layers\.(\d+)\.self_attn\.q_proj", "blk.{}.attn_q.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.k_proj", "blk.{}.attn_k.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.v_proj", "blk.{}.attn_v.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.o_proj", "blk.{}.attn_output.weight"),
    (r"model\.layers\.(\d+)\.mlp\.gate_proj", "blk.{}.ffn_gate.weight"),
    (r"model\.layers\.(\d+)\.mlp\.up_proj", "blk.{}.ffn_up.weight"),
    (r"model\.layers\.(\d+)\.mlp\.down_proj", "blk.{}.ffn_down.weight"),
    (r"lm_head", "output.weight"),
]


def weight_types(path: Path) -> dict[str, str]:
    """GGUF tensor name -> ggml type name (the tied lm_head reads token_embd)."""
    from gguf import GGUFReader

    types = {t.name: t.tensor_type.name for t in GGUFReader(str(path), "r").tensors}
    if "output.weight" not in types and "token_embd.weight" in types:
        types["output.weight"] = types["token_embd.weight"]
    return types


def quantize_block(x: torch.Tensor, block: int) -> torch.Tensor:
    """Round to 8 bits per block of ``block`` along the last dim (scale max|x|/127), as
    ggml's quantize_row_q8_0 / q8_1 / q8_K do; values stay float32."""
    shape = x.shape
    v = x.float().reshape(-1, block)
    d = v.abs().amax(-1, keepdim=True) / 127.0
    safe = torch.where(d > 0, d, torch.ones_like(d))
    q = torch.where(d > 0, torch.round(v / safe), torch.zeros_like(v))
    return (q * d).reshape(shape).to(x.dtype)


def converter(kind: str, block: int) -> Any:
    if kind == "q8":
        return lambda x: quantize_block(x, block) if x.shape[-1] % block == 0 else x
    if kind == "f16":
        return lambda x: x.to(torch.float16).to(x.dtype)
    return lambda x: x.to(torch.bfloat16).to(x.dtype)


def quantize_activations(model: nn.Module, types: Mapping[str, str]) -> dict[str, str]:
    """Hooks on ``model``'s Linear layers; returns module path -> scheme applied."""
    done: dict[str, str] = {}
    for path, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        for pattern, gguf_name in HF_TO_GGUF:
            m = re.fullmatch(pattern, path)
            if m is None:
                continue
            kind = VEC_DOT.get(types.get(gguf_name.format(*m.groups()), ""))
            if kind is not None:
                fn = converter(*kind)
                mod.register_forward_pre_hook(lambda _m, args, fn=fn: (fn(args[0]), *args[1:]))
                done[path] = f"{kind[0]}/{kind[1]}" if kind[1] else kind[0]
            break
    return done

"""Built-in engine-style port of Qwen v1 (``--candidate port --model qwen``).

Qwen's weights mapped onto the engine layout of parity.models.engine: ``c_attn`` is already
a fused q|k|v matrix; ``w1``/``w2`` are fused into one ``gate_up_proj`` with the activation
on the second half (``gate_branch = 1``: Qwen computes ``w1(x) * silu(w2(x))``).
"""
from __future__ import annotations

from typing import Any

import torch

from parity.models.engine import EnginePort, PortConfig

RENAMES = {
    "ln_1.weight": "input_layernorm.weight",
    "attn.c_attn.weight": "self_attn.qkv_proj.weight",
    "attn.c_attn.bias": "self_attn.qkv_proj.bias",
    "attn.c_proj.weight": "self_attn.o_proj.weight",
    "ln_2.weight": "post_attention_layernorm.weight",
    "mlp.c_proj.weight": "mlp.down_proj.weight",
}


def port_config(cfg: Any) -> PortConfig:
    return PortConfig(
        vocab_size=cfg.embedding_rows, head_vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, num_heads=cfg.n_head, num_kv_heads=cfg.n_head,
        head_dim=cfg.head_dim, intermediate_size=cfg.intermediate_size, num_layers=cfg.n_layer,
        norm_eps=cfg.layer_norm_epsilon, rope_base=cfg.rotary_emb_base, rotary_dim=cfg.rotary_dim,
        qkv_bias=True, gate_branch=1, max_positions=min(cfg.seq_length, 8192), seq_length=cfg.seq_length,
        dynamic_ntk=cfg.use_dynamic_ntk, logn_attn=cfg.use_logn_attn,
    )


def convert(sd: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    out = {"model.embed_tokens.weight": sd["transformer.wte.weight"],
           "model.norm.weight": sd["transformer.ln_f.weight"], "lm_head.weight": sd["lm_head.weight"]}
    for i in range(num_layers):
        src, dst = f"transformer.h.{i}.", f"model.layers.{i}."
        for a, b in RENAMES.items():
            out[dst + b] = sd[src + a]
        out[dst + "mlp.gate_up_proj.weight"] = torch.cat([sd[src + "mlp.w1.weight"], sd[src + "mlp.w2.weight"]], dim=0)
    return out


def build_port(config: Any, state_dict: dict[str, torch.Tensor]) -> EnginePort:
    """The factory ``--candidate port`` calls: (model config, reference state dict) -> module."""
    pc = port_config(config)
    return EnginePort.from_fused(pc, convert(state_dict, pc.num_layers))

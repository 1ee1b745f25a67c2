"""Built-in engine-style port of LLaMA (``--candidate port --model llama``).

At load, q/k/v weights are concatenated into one fused ``qkv_proj`` and gate/up into one
``gate_up_proj`` (activation on the first half: ``gate_branch = 0``), as engines do.
"""
from __future__ import annotations

from typing import Any

import torch

from parity.models.engine import EnginePort, PortConfig

RENAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "self_attn.o_proj.weight": "self_attn.o_proj.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
}


def port_config(cfg: Any) -> PortConfig:
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    rope = getattr(cfg, "rope_parameters", None) or {}
    base = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    partial = rope.get("partial_rotary_factor", getattr(cfg, "partial_rotary_factor", 1.0))
    return PortConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_heads=heads,
        num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads, head_dim=head_dim,
        intermediate_size=cfg.intermediate_size, num_layers=cfg.num_hidden_layers, norm_eps=cfg.rms_norm_eps,
        rope_base=float(base), rotary_dim=int(head_dim * partial), qkv_bias=bool(getattr(cfg, "attention_bias", False)),
        gate_branch=0, max_positions=min(int(getattr(cfg, "max_position_embeddings", 4096)), 8192),
    )


def convert(sd: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    out = {"model.embed_tokens.weight": sd["model.embed_tokens.weight"], "model.norm.weight": sd["model.norm.weight"],
           "lm_head.weight": sd.get("lm_head.weight", sd["model.embed_tokens.weight"])}
    for i in range(num_layers):
        p = f"model.layers.{i}."
        for a, b in RENAMES.items():
            out[p + b] = sd[p + a]
        att = p + "self_attn."
        out[att + "qkv_proj.weight"] = torch.cat([sd[att + f"{x}_proj.weight"] for x in "qkv"], dim=0)
        if att + "q_proj.bias" in sd:
            out[att + "qkv_proj.bias"] = torch.cat([sd[att + f"{x}_proj.bias"] for x in "qkv"], dim=0)
        out[p + "mlp.gate_up_proj.weight"] = torch.cat([sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"]], dim=0)
    return out


def build_port(config: Any, state_dict: dict[str, torch.Tensor]) -> EnginePort:
    """The factory ``--candidate port`` calls: (model config, reference state dict) -> module."""
    pc = port_config(config)
    return EnginePort.from_fused(pc, convert(state_dict, pc.num_layers))

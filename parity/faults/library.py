"""The built-in faults (the known Qwen/LLaMA porting bugs). Imports torch: loaded only when
a fault is used (parity.faults stays light)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from parity.errors import UsageError
from parity.faults.registry import FaultSpec, fault
from parity.models.engine import EnginePort, RotaryTable

WRONG_NORM_EPS = 0.1
OUTLIER_CHANNEL = 7
OUTLIER_TARGET = 2.5e5  # scale of the outlier channel; measured |x| max 4.7e5 (qwen), 8.7e5 (llama) vs fp16 max 65504


def _layers(port: Any, spec: FaultSpec) -> list[Any]:
    if not isinstance(port, EnginePort):
        raise UsageError(f"fault '{spec.fault.name}' alters the built-in engine ports only.",
                         note="use --candidate port without --port (model qwen or llama)")
    layers = list(port.model.layers)
    return layers if spec.block is None else [layers[spec.block]]


@fault("double-rope", "rotary applied in the attention function and again before it (attention-plugin bug)")
def _double_rope(port: Any, spec: FaultSpec, ctx: Any) -> None:
    for layer in _layers(port, spec):
        layer.self_attn.rotary_before_kernel = True


@fault("silu-wrong-branch", "gated-MLP activation on the wrong half (Qwen: w1 instead of w2; LLaMA: up instead of gate)")
def _silu_wrong_branch(port: Any, spec: FaultSpec, ctx: Any) -> None:
    for layer in _layers(port, spec):
        layer.mlp.gate_branch = 1 - layer.mlp.gate_branch


@fault("qkv-split", "fused QKV split in the per-KV-group interleaved order instead of q|k|v")
def _qkv_split(port: Any, spec: FaultSpec, ctx: Any) -> None:
    for layer in _layers(port, spec):
        layer.self_attn.qkv_layout = "grouped"


@fault("rope-base", "rotary table built with a wrong base (x100); @N: only that layer's table")
def _rope_base(port: Any, spec: FaultSpec, ctx: Any) -> None:
    layers = _layers(port, spec)
    wrong = RotaryTable(port.rope.dim, port.rope.base * 100.0, port.rope.cos.shape[0])
    if spec.block is None:
        port.rope = wrong
    else:
        layers[0].self_attn.rope = wrong


@fault("norm-eps", f"RMSNorm epsilon {WRONG_NORM_EPS:g} instead of the config's; @N: that block's two norms")
def _norm_eps(port: Any, spec: FaultSpec, ctx: Any) -> None:
    for layer in _layers(port, spec):
        layer.input_layernorm.eps = WRONG_NORM_EPS
        layer.post_attention_layernorm.eps = WRONG_NORM_EPS
    if spec.block is None:
        port.model.norm.eps = WRONG_NORM_EPS


@fault("norm-no-upcast", "RMSNorm's mean of squares in the activation dtype, no float32 upcast (in float16 it "
       "overflows where |x| > 256, e.g. at massive activations); @N: that block's two norms")
def _norm_no_upcast(port: Any, spec: FaultSpec, ctx: Any) -> None:
    for layer in _layers(port, spec):
        layer.input_layernorm.upcast = False
        layer.post_attention_layernorm.upcast = False
    if spec.block is None:
        port.model.norm.upcast = False


def _mlp_down(model: nn.Module, block: int, ctx: Any) -> nn.Linear:
    """The MLP's output projection of ``block``: its last Linear child producing the hidden size."""
    mlp = model.get_submodule(ctx.probe_map.bind(f"blocks.{block}.mlp_out").module)
    hidden = getattr(ctx.config, "hidden_size", None)
    outs = [m for m in mlp.children() if isinstance(m, nn.Linear) and m.out_features == hidden]
    if not outs:
        raise UsageError(f"fault 'mlp-overflow': no Linear producing the hidden size in the MLP of block {block}.")
    return outs[-1]


@fault("mlp-overflow", f"an outlier hidden channel ({OUTLIER_CHANNEL}) in one block's MLP output, "
       "|x| ~ 1e5..1e6: finite in float32, beyond the float16 range (default block: the middle one)",
       target="model")
def _mlp_overflow(model: Any, spec: FaultSpec, ctx: Any) -> None:
    n = ctx.num_blocks
    block = n // 2 if spec.block is None else spec.block
    down = _mlp_down(model, block, ctx)
    ch = OUTLIER_CHANNEL % down.out_features
    with torch.no_grad():
        row = down.weight[ch]
        # |row| * sqrt(width) * ~0.3 (typical activation) ~ OUTLIER_TARGET
        row.mul_(OUTLIER_TARGET / (row.norm().item() * 0.3 + 1e-12))

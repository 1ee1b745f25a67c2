"""Engine-style building blocks for the built-in ports (``--candidate port``).

Written the way inference engines write models (TensorRT-LLM's PyTorch backend in
particular), not the way Hugging Face does, so that the usual porting bugs have a place
to live:

* one fused QKV projection, split after the matmul (:class:`FusedQKVAttention`);
* a rotary cos/sin table precomputed once and applied inside an attention function
  (:func:`attention`, the "plugin"), not in the model;
* a generic gated MLP with the activation on a configurable branch (:class:`GatedMLP`);
* decoder layers that return ``(hidden, residual)``, the residual add fused into the next
  norm (:class:`FusedAddRMSNorm`), so ``resid_post`` of block i only exists inside the next
  norm: the probe map (``parity/probes/engine_port.toml``) uses transforms for it.

q/k/v and q_rot/k_rot are exposed with ``parity.probe`` (like ``register_network_output``);
everything else through the probe map. Each knob a fault turns is a plain attribute
(see parity.faults).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from parity.capture.api import probe


@dataclass
class PortConfig:
    vocab_size: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    num_layers: int
    norm_eps: float
    rope_base: float
    rotary_dim: int
    qkv_bias: bool
    gate_branch: int  # which half of the fused gate/up projection gets the activation
    max_positions: int = 4096
    head_vocab_size: int | None = None  # lm_head rows when not vocab_size (Qwen v1 pads only the embedding)
    seq_length: int | None = None  # Qwen v1: dynamic NTK / logN threshold
    dynamic_ntk: bool = False
    logn_attn: bool = False


@dataclass
class PortOutput:
    logits: torch.Tensor
    past_key_values: PortCache | None = None


class PortCache(list):
    """Per-layer ``(k, v)`` ``[B, S, kv_heads, head_dim]`` (k rotated), plus the NTK alpha
    decided at prefill (Qwen v1)."""

    def __init__(self, layers: Any = (), ntk_alpha: float = 1.0) -> None:
        super().__init__(layers)
        self.ntk_alpha = ntk_alpha

    @property
    def seq_len(self) -> int:
        return int(self[0][0].shape[1]) if len(self) else 0


# --------------------------------------------------------------------------- rotary


class RotaryTable:
    """Precomputed float32 cos/sin ``[P, rotary_dim]`` (rotate-half layout), grown on demand.

    Plain tensors, not buffers, so casting the port to float16 leaves them in float32.
    """

    def __init__(self, dim: int, base: float, positions: int) -> None:
        self.dim, self.base = dim, float(base)
        self.cos, self.sin = self._build(positions, torch.device("cpu"))

    def _build(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = 1.0 / (self.base ** (torch.arange(0, self.dim, 2, device=device).float() / self.dim))
        freqs = torch.outer(torch.arange(n, device=device).float(), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()

    def lookup(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        need = int(positions.max().item()) + 1 if positions.numel() else 0
        if need > self.cos.shape[0] or self.cos.device != positions.device:
            self.cos, self.sin = self._build(max(need, self.cos.shape[0]), positions.device)
        return self.cos[positions], self.sin[positions]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` channels of ``x`` [B, T, h, d] in float32."""
    rd = cos.shape[-1]
    xf = x.float()
    rot, rest = xf[..., :rd], xf[..., rd:]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat((rot * c + rotate_half(rot) * s, rest), dim=-1).type_as(x)


# --------------------------------------------------------------------------- attention "plugin"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *,
              prefix: str, rotary: bool = True, q_scale: torch.Tensor | None = None,
              past: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """The attention function: rotary (when ``rotary``), KV append, causal softmax attention.

    q [B, T, h, d], k/v [B, T, kv, d] -> output [B, T, h*d] and the layer's new (k, v).
    """
    if rotary:
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    if q_scale is not None:
        q = q * q_scale.type_as(q)[None, :, None, None]
    probe(f"{prefix}.attn.q_rot", q)
    probe(f"{prefix}.attn.k_rot", k)
    if past is not None:
        k, v = torch.cat((past[0], k), dim=1), torch.cat((past[1], v), dim=1)
    present = (k, v)
    rep = q.shape[2] // k.shape[2]
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if rep > 1:
        kh, vh = kh.repeat_interleave(rep, dim=1), vh.repeat_interleave(rep, dim=1)
    scores = torch.matmul(qh, kh.transpose(-1, -2)).float() / math.sqrt(q.shape[-1])
    t, s = q.shape[1], kh.shape[2]
    mask = torch.ones(s, s, dtype=torch.bool, device=q.device).tril()[s - t:]
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).to(vh.dtype)
    out = torch.matmul(probs, vh).transpose(1, 2)
    return out.reshape(*out.shape[:2], -1), present


class FusedQKVAttention(nn.Module):
    """One ``qkv_proj`` matmul, split into q | k | v, then the attention function.

    Knobs: ``rotary_before_kernel`` (apply rotary here too: with the kernel's own rotary it is
    applied twice), ``qkv_layout`` ("contiguous" q|k|v rows, or "grouped": Megatron-style
    per-KV-group interleaving), ``rope`` (a per-layer table overriding the model's).
    """

    def __init__(self, cfg: PortConfig, layer: int) -> None:
        super().__init__()
        self.cfg, self.layer = cfg, layer
        self.q_size, self.kv_size = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=False)
        self.rotary_before_kernel = False
        self.qkv_layout = "contiguous"
        self.rope: RotaryTable | None = None

    def split(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, _ = qkv.shape
        hd, kv = self.cfg.head_dim, self.cfg.num_kv_heads
        if self.qkv_layout == "grouped":
            g = qkv.view(b, t, kv, -1, hd)
            per = self.cfg.num_heads // kv
            q, k, v = g[:, :, :, :per], g[:, :, :, per], g[:, :, :, per + 1]
            return q.reshape(b, t, -1, hd), k, v
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        return q.view(b, t, -1, hd), k.view(b, t, kv, hd), v.view(b, t, kv, hd)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], positions: torch.Tensor,
                q_scale: torch.Tensor | None = None, cache: PortCache | None = None) -> torch.Tensor:
        prefix = f"blocks.{self.layer}"
        q, k, v = self.split(self.qkv_proj(x))
        probe(f"{prefix}.attn.q", q)
        probe(f"{prefix}.attn.k", k)
        probe(f"{prefix}.attn.v", v)
        cos, sin = self.rope.lookup(positions) if self.rope is not None else rope
        if self.rotary_before_kernel:
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        past = cache[self.layer] if cache is not None and len(cache) > self.layer else None
        out, present = attention(q, k, v, cos, sin, prefix=prefix, q_scale=q_scale, past=past)
        if cache is not None:
            if past is None:
                cache.append(present)
            else:
                cache[self.layer] = present
        return self.o_proj(out)


# --------------------------------------------------------------------------- MLP / norm / layer


class GatedMLP(nn.Module):
    """``down(act(a_g) * a_other)`` over one fused ``gate_up_proj``; ``gate_branch`` (0 or 1)
    says which half of it gets the activation (LLaMA: 0 = gate; Qwen v1: 1 = w2)."""

    def __init__(self, hidden: int, intermediate: int, gate_branch: int) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden, 2 * intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)
        self.gate_branch = gate_branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        halves = self.gate_up_proj(x).chunk(2, dim=-1)
        gate, other = halves[self.gate_branch], halves[1 - self.gate_branch]
        return self.down_proj(F.silu(gate) * other)


class FusedAddRMSNorm(nn.Module):
    """``norm(x + residual)``, returning ``(normed, x + residual)``; with no residual,
    ``(norm(x), x)``. Knob: ``upcast`` (the mean of squares in float32; off, it is computed in
    the activation dtype, where float16 overflows once |x| passes 256)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.upcast = True

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is not None:
            x = x + residual
        xf = x.float() if self.upcast else x
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight, x


class DecoderLayer(nn.Module):
    """Returns ``(mlp_out, resid_mid)``; the caller's next norm adds them (fused)."""

    def __init__(self, cfg: PortConfig, layer: int) -> None:
        super().__init__()
        self.input_layernorm = FusedAddRMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.self_attn = FusedQKVAttention(cfg, layer)
        self.post_attention_layernorm = FusedAddRMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, cfg.gate_branch)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor | None = None, *,
                rope: tuple[torch.Tensor, torch.Tensor], positions: torch.Tensor,
                q_scale: torch.Tensor | None = None, cache: PortCache | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, residual = self.input_layernorm(hidden_states, residual)
        hidden = self.self_attn(hidden, rope, positions, q_scale, cache)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class EngineModel(nn.Module):
    def __init__(self, cfg: PortConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = FusedAddRMSNorm(cfg.hidden_size, cfg.norm_eps)


class EnginePort(nn.Module):
    """A causal LM port: ``forward(input_ids, past_key_values=None, use_cache=False,
    position_ids=None) -> PortOutput(logits, past_key_values)``."""

    def __init__(self, cfg: PortConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = EngineModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.head_vocab_size or cfg.vocab_size, bias=False)
        self.rope = RotaryTable(cfg.rotary_dim, cfg.rope_base, cfg.max_positions)
        self._ntk_tables: dict[float, RotaryTable] = {}

    # Qwen v1 dynamic NTK / logN; plain models have neither.
    def _ntk_alpha(self, t: int, past: PortCache | None) -> float:
        if not self.cfg.dynamic_ntk or self.cfg.seq_length is None:
            return 1.0
        if past:
            return float(getattr(past, "ntk_alpha", 1.0))
        return float(max(2 ** math.ceil(math.log2(t / self.cfg.seq_length) + 1) - 1, 1))

    def _table(self, alpha: float) -> RotaryTable:
        if alpha == 1.0:
            return self.rope
        if alpha not in self._ntk_tables:
            d = self.cfg.rotary_dim
            self._ntk_tables[alpha] = RotaryTable(d, self.rope.base * alpha ** (d / (d - 2)), 0)
        return self._ntk_tables[alpha]

    def _q_scale(self, positions: torch.Tensor) -> torch.Tensor | None:
        if not self.cfg.logn_attn or self.cfg.seq_length is None:
            return None
        p = positions.to(torch.float64)
        scale = torch.log(p + 1) / math.log(self.cfg.seq_length)
        return torch.where(positions >= self.cfg.seq_length, scale, torch.ones_like(scale))

    def forward(self, input_ids: torch.Tensor, past_key_values: PortCache | None = None,
                use_cache: bool = False, position_ids: torch.Tensor | None = None) -> PortOutput:
        t = input_ids.shape[1]
        past_len = past_key_values.seq_len if past_key_values else 0
        if position_ids is None:
            positions = torch.arange(past_len, past_len + t, device=input_ids.device)
        else:
            positions = position_ids.reshape(-1)[-t:].to(input_ids.device)
        alpha = self._ntk_alpha(t, past_key_values)
        cos, sin = self._table(alpha).lookup(positions)
        probe("rope.cos", cos)
        probe("rope.sin", sin)
        cache = past_key_values
        if cache is None and use_cache:
            cache = PortCache(ntk_alpha=alpha)
        q_scale = self._q_scale(positions)
        hidden, residual = self.model.embed_tokens(input_ids), None
        for layer in self.model.layers:
            hidden, residual = layer(hidden, residual=residual, rope=(cos, sin), positions=positions,
                                     q_scale=q_scale, cache=cache)
        hidden, _ = self.model.norm(hidden, residual)
        return PortOutput(self.lm_head(hidden), cache if use_cache else None)

    def load_fused(self, sd: dict[str, torch.Tensor]) -> None:
        """Load an engine-named state dict (fused qkv / gate_up already built), strictly."""
        missing, unexpected = self.load_state_dict(sd, strict=False, assign=True)
        if missing or unexpected:
            raise KeyError(f"port weights: missing {missing[:3]}, unexpected {unexpected[:3]}")

    @classmethod
    def from_fused(cls, cfg: PortConfig, sd: dict[str, torch.Tensor]) -> EnginePort:
        """A port holding ``sd``'s tensors as its weights, on their device: the modules are
        made on the meta device (no random init of billions of weights on the host, no copy),
        so a 7B port costs what its fused weights cost. Tensors not fused here are the
        caller's (the reference's): the port only reads them."""
        with torch.device("meta"):
            port = cls(cfg)
        port.load_fused(sd)
        return port

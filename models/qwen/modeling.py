"""Clean-room Qwen v1 (Qwen-7B-Chat, ``QWenLMHeadModel``) in plain torch.

Written from measured facts of the original (docs/contributing/families.md), not from its code.
Module and parameter names match the Qwen-7B-Chat checkpoints, so ``load_state_dict(strict=True)``
works on a real state dict. Probe points: ``transformer.wte`` (embed), ``transformer.rotary_emb`` (returns
``(cos, sin)``), per block ``ln_1`` / ``attn`` (tuple, element 0) / ``attn.hook_{q,k,v}`` /
``attn.hook_{q,k}_rot`` / ``attn.c_proj`` / ``ln_2`` / ``mlp`` / the block itself (tuple,
element 0), then ``transformer.ln_f`` and ``lm_head``.

KV cache: :class:`QWenCache`, a list with one ``(k, v)`` tuple per layer, each
``[B, S, heads, head_dim]`` (k already rotated), plus the attribute ``ntk_alpha``: the dynamic-NTK
alpha decided at prefill and reused by every decode step that passes the cache back.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from parity.errors import ModelError

ATTN_IMPLEMENTATIONS = ("eager", "sdpa")
_REQUIRED_KEYS = ("n_embd", "n_head", "n_layer", "ffn_hidden_size", "vocab_size")


class QWenConfigError(ModelError, ValueError):
    """A Qwen config that is missing keys or does not fit together."""


# --------------------------------------------------------------------------- config


@dataclass(kw_only=True)
class QWenConfig:
    """The subset of Qwen v1's config.json that changes the numbers."""

    vocab_size: int = 151851
    n_embd: int
    n_head: int
    n_layer: int
    ffn_hidden_size: int
    kv_channels: int | None = None
    layer_norm_epsilon: float = 1e-5
    rotary_emb_base: float = 10000.0
    rotary_pct: float = 1.0
    seq_length: int = 2048
    use_dynamic_ntk: bool = False
    use_logn_attn: bool = False
    no_bias: bool = True
    padded_vocab_size: int | None = None
    max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        if self.kv_channels is None and self.n_head > 0:
            self.kv_channels = self.n_embd // self.n_head
        self.layer_norm_epsilon = float(self.layer_norm_epsilon)
        self.rotary_emb_base = float(self.rotary_emb_base)
        self.rotary_pct = float(self.rotary_pct)
        self._validate()

    def _validate(self) -> None:
        sizes = ("vocab_size", "n_embd", "n_head", "n_layer", "ffn_hidden_size", "seq_length")
        for name in sizes:
            if int(getattr(self, name)) <= 0:
                raise QWenConfigError(f"Qwen config: {name} must be positive.")
        if self.kv_channels is None or self.kv_channels <= 0:
            raise QWenConfigError("Qwen config: kv_channels must be positive.")
        if self.ffn_hidden_size % 2:
            raise QWenConfigError(
                "Qwen config: ffn_hidden_size must be even (each MLP branch is half of it)."
            )
        rd = self.rotary_dim
        if rd <= 0 or rd % 2:
            raise QWenConfigError(f"Qwen config: rotary dim {rd} must be positive and even.")
        if self.use_dynamic_ntk and rd <= 2:
            raise QWenConfigError("Qwen config: dynamic NTK needs a rotary dim above 2.")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QWenConfig:
        """Build from a Qwen config.json dict; unknown keys are ignored."""
        missing = [k for k in _REQUIRED_KEYS if d.get(k) is None]
        if missing:
            raise QWenConfigError(
                f"Qwen config is missing required key(s): {', '.join(missing)}.",
                note=f"required keys: {', '.join(_REQUIRED_KEYS)}",
            )
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names and v is not None}
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def head_dim(self) -> int:
        assert self.kv_channels is not None
        return int(self.kv_channels)

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_pct)

    @property
    def hidden_size(self) -> int:
        return self.n_embd

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layer

    @property
    def num_attention_heads(self) -> int:
        return self.n_head

    @property
    def intermediate_size(self) -> int:
        return self.ffn_hidden_size // 2

    @property
    def projection_size(self) -> int:
        """Width of each of q, k, v: heads x head_dim (= n_embd for the released models)."""
        return self.n_head * self.head_dim

    @property
    def embedding_rows(self) -> int:
        """Rows of ``wte`` (``lm_head`` has ``vocab_size`` rows, as in the original)."""
        return self.padded_vocab_size or self.vocab_size


# --------------------------------------------------------------------------- outputs / cache


class QWenCache(list):
    """Per-layer ``(k, v)`` tuples ``[B, S, heads, head_dim]`` plus the prefill's NTK alpha."""

    def __init__(self, layers: Any = (), ntk_alpha: float = 1.0) -> None:
        super().__init__(layers)
        self.ntk_alpha = float(ntk_alpha)

    @property
    def seq_len(self) -> int:
        return int(self[0][0].shape[1]) if len(self) else 0


@dataclass
class QWenOutput:
    logits: torch.Tensor
    past_key_values: QWenCache | None = None


# --------------------------------------------------------------------------- rotary


def ntk_alpha_for_length(length: int, seq_length: int) -> float:
    """Dynamic-NTK alpha for a prefill of ``length`` tokens (1.0 when length <= seq_length)."""
    context = math.log2(length / seq_length) + 1
    return float(max(2 ** math.ceil(context) - 1, 1))


def rotary_inv_freq(base: float, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """``1 / base**(arange(0, dim, 2) / dim)`` in float32."""
    exponents = torch.arange(0, dim, 2, device=device).float() / dim
    return 1.0 / (base**exponents)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotate-half layout: the two halves of the last dim are the pair, not interleaved lanes."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` channels of ``x`` [B, T, h, d] in float32."""
    rd = cos.shape[-1]
    xf = x.float()
    rot, rest = xf[..., :rd], xf[..., rd:]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    rot = rot * c + rotate_half(rot) * s
    return torch.cat((rot, rest), dim=-1).type_as(x)


class QWenRotaryEmbedding(nn.Module):
    """Returns float32 ``(cos, sin)`` tables ``[T, dim]`` for the given positions.

    The inverse frequencies are computed on the fly in float32 (no buffer, so ``model.to(bf16)``
    cannot round them and the state dict stays checkpoint-shaped).
    """

    def __init__(self, dim: int, base: float) -> None:
        super().__init__()
        self.dim = dim
        self.base = float(base)

    def effective_base(self, ntk_alpha: float = 1.0) -> float:
        if ntk_alpha == 1.0:
            return self.base
        return self.base * ntk_alpha ** (self.dim / (self.dim - 2))

    def forward(
        self,
        positions: int | torch.Tensor,
        device: torch.device | str | None = None,
        ntk_alpha: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(positions, int):
            positions = torch.arange(positions, device=device)
        elif device is not None:
            positions = positions.to(device)
        inv_freq = rotary_inv_freq(self.effective_base(ntk_alpha), self.dim, positions.device)
        freqs = torch.outer(positions.float(), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()


# --------------------------------------------------------------------------- layers


class QWenRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class QWenMLP(nn.Module):
    def __init__(self, config: QWenConfig) -> None:
        super().__init__()
        bias = not config.no_bias
        width = config.intermediate_size
        self.w1 = nn.Linear(config.n_embd, width, bias=bias)
        self.w2 = nn.Linear(config.n_embd, width, bias=bias)
        self.c_proj = nn.Linear(width, config.n_embd, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Porting trap: Qwen gates with SiLU on the *second* projection (w2), not on w1 as a
        # generic gated MLP (silu(gate) * up with gate = first weight) would.
        return self.c_proj(self.w1(x) * F.silu(self.w2(x)))


def logn_scale(positions: torch.Tensor, seq_length: int) -> torch.Tensor:
    """LogN factor per 0-based position: log(p+1)/log(seq_length) for p >= seq_length, else 1."""
    p = positions.to(torch.float64)
    scale = torch.log(p + 1) / math.log(seq_length)
    return torch.where(positions >= seq_length, scale, torch.ones_like(scale))


def causal_mask(q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
    """Bool [q_len, k_len], True = may attend; the queries are the last q_len keys."""
    full = torch.ones(k_len, k_len, dtype=torch.bool, device=device).tril()
    return full[k_len - q_len :]


#: most score elements (batch x heads x query rows x keys) one eager step makes (64 MiB in
#: float32): longer prompts are computed in blocks of query rows, each row from the same
#: operations on the same numbers (softmax is per row), so the scores never exist whole
EAGER_SCORE_ELEMENTS = 1 << 24


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q, k, v [B, h, T|S, d] -> [B, h, T, d]; softmax in the activation dtype. The scores are
    divided by sqrt(d) held in the activation dtype, as the original does (11.3125, not
    11.3137, for d = 128 in bfloat16)."""
    t = q.shape[-2]
    mask = causal_mask(t, k.shape[-2], q.device)
    rows = max(1, EAGER_SCORE_ELEMENTS // max(1, q.shape[0] * q.shape[1] * k.shape[-2]))
    if rows >= t:
        return _eager_rows(q, k, v, mask)
    return torch.cat([_eager_rows(q[..., i:i + rows, :], k, v, mask[i:i + rows]) for i in range(0, t, rows)], dim=-2)


def _eager_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    scores = torch.matmul(q, k.transpose(-1, -2))
    scores = scores / torch.full([], k.shape[-1] ** 0.5, dtype=scores.dtype, device=scores.device)
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, v)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The same attention through SDPA, with the scale of :func:`eager_attention` (sqrt(d)
    rounded to the activation dtype)."""
    mask = causal_mask(q.shape[-2], k.shape[-2], q.device)
    root = float(torch.tensor(q.shape[-1] ** 0.5, dtype=q.dtype))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0 / root)


KVPair = tuple[torch.Tensor, torch.Tensor]
Rope = tuple[torch.Tensor, torch.Tensor]


class QWenAttention(nn.Module):
    def __init__(self, config: QWenConfig, attn_implementation: str = "eager") -> None:
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.proj = config.projection_size
        self.seq_length = config.seq_length
        self.use_logn_attn = config.use_logn_attn
        self.attn_implementation = attn_implementation
        self.c_attn = nn.Linear(config.n_embd, 3 * self.proj, bias=True)
        self.c_proj = nn.Linear(self.proj, config.n_embd, bias=not config.no_bias)
        for name in ("hook_q", "hook_k", "hook_v", "hook_q_rot", "hook_k_rot"):
            self.add_module(name, nn.Identity())

    def _split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        q, k, v = self.c_attn(x).split(self.proj, dim=-1)  # rows q | k | v
        shape = (b, t, self.n_head, self.head_dim)
        return self.hook_q(q.view(shape)), self.hook_k(k.view(shape)), self.hook_v(v.view(shape))

    def _rotate(
        self, q: torch.Tensor, k: torch.Tensor, rope: Rope, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = rope
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if self.use_logn_attn and not self.training:
            q = q * logn_scale(positions, self.seq_length).type_as(q)[None, :, None, None]
        return self.hook_q_rot(q), self.hook_k_rot(k)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # -> [B, h, T, d]
        if self.attn_implementation == "sdpa":
            out = sdpa_attention(q, k, v)
        elif self.attn_implementation == "eager":
            out = eager_attention(q, k, v)
        else:
            raise ModelError(
                f"Unknown attn_implementation '{self.attn_implementation}'.",
                note=f"choose one of: {', '.join(ATTN_IMPLEMENTATIONS)}",
            )
        return out.transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        rope: Rope,
        positions: torch.Tensor,
        layer_past: KVPair | None = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, KVPair | None]:
        q, k, v = self._split_heads(x)
        q, k = self._rotate(q, k, rope, positions)
        if layer_past is not None:
            k = torch.cat((layer_past[0], k), dim=1)
            v = torch.cat((layer_past[1], v), dim=1)
        present = (k, v) if use_cache else None
        out = self._attend(q, k, v)
        return self.c_proj(out.reshape(*x.shape[:2], self.proj)), present


class QWenBlock(nn.Module):
    def __init__(self, config: QWenConfig, attn_implementation: str = "eager") -> None:
        super().__init__()
        self.ln_1 = QWenRMSNorm(config.n_embd, config.layer_norm_epsilon)
        self.attn = QWenAttention(config, attn_implementation)
        self.ln_2 = QWenRMSNorm(config.n_embd, config.layer_norm_epsilon)
        self.mlp = QWenMLP(config)

    def forward(
        self,
        x: torch.Tensor,
        rope: Rope,
        positions: torch.Tensor,
        layer_past: KVPair | None = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, KVPair | None]:
        attn_out, present = self.attn(self.ln_1(x), rope, positions, layer_past, use_cache)
        x = x + attn_out
        x = x + self.mlp(self.ln_2(x))
        return x, present


# --------------------------------------------------------------------------- model


class QWenModel(nn.Module):
    """``transformer``: embedding, rotary tables, blocks, final norm."""

    def __init__(self, config: QWenConfig, attn_implementation: str = "eager") -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.embedding_rows, config.n_embd)
        self.rotary_emb = QWenRotaryEmbedding(config.rotary_dim, config.rotary_emb_base)
        self.h = nn.ModuleList(
            QWenBlock(config, attn_implementation) for _ in range(config.n_layer)
        )
        self.ln_f = QWenRMSNorm(config.n_embd, config.layer_norm_epsilon)

    def ntk_alpha(self, new_tokens: int, past: list[KVPair] | None) -> float:
        """Prefill decides alpha from its length; decode reuses the cache's alpha."""
        if self.training or not self.config.use_dynamic_ntk:
            return 1.0
        if past:
            stored = getattr(past, "ntk_alpha", None)
            if stored is not None:
                return float(stored)
            # A plain list carries no alpha: assume it holds exactly one prefill.
            return ntk_alpha_for_length(int(past[0][0].shape[1]), self.config.seq_length)
        return ntk_alpha_for_length(new_tokens, self.config.seq_length)

    def forward(
        self,
        input_ids: torch.Tensor,
        past_key_values: list[KVPair] | None = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, QWenCache | None]:
        t = input_ids.shape[1]
        past_len = int(past_key_values[0][0].shape[1]) if past_key_values else 0
        alpha = self.ntk_alpha(t, past_key_values)
        positions = torch.arange(past_len, past_len + t, device=input_ids.device)
        rope = self.rotary_emb(positions, ntk_alpha=alpha)
        x = self.wte(input_ids)
        presents = QWenCache(ntk_alpha=alpha) if use_cache else None
        for i, block in enumerate(self.h):
            layer_past = past_key_values[i] if past_key_values else None
            x, present = block(x, rope, positions, layer_past, use_cache)
            if presents is not None:
                presents.append(present)
        return self.ln_f(x), presents


class QWenLMHeadModel(nn.Module):
    """Qwen v1 causal LM. ``attn_implementation`` ("eager" | "sdpa") can be set at any time."""

    def __init__(self, config: QWenConfig, attn_implementation: str = "eager") -> None:
        super().__init__()
        _check_attn_implementation(attn_implementation)
        self.config = config
        self.transformer = QWenModel(config, attn_implementation)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self._attn_implementation = attn_implementation
        self.reset_parameters()

    @classmethod
    def from_config(
        cls, config: QWenConfig | dict[str, Any], attn_implementation: str = "eager"
    ) -> QWenLMHeadModel:
        if isinstance(config, dict):
            config = QWenConfig.from_dict(config)
        return cls(config, attn_implementation=attn_implementation)

    @property
    def attn_implementation(self) -> str:
        return self._attn_implementation

    @attn_implementation.setter
    def attn_implementation(self, value: str) -> None:
        _check_attn_implementation(value)
        self._attn_implementation = value
        for block in self.transformer.h:
            block.attn.attn_implementation = value

    def reset_parameters(self, std: float = 0.02) -> None:
        """Random init (normal(0, std) weights, zero biases, unit norms) for weightless tests."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, QWenRMSNorm):
                nn.init.ones_(module.weight)

    def forward(
        self,
        input_ids: torch.Tensor,
        past_key_values: list[KVPair] | None = None,
        use_cache: bool = False,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> QWenOutput:
        """``attention_mask`` and ``position_ids`` are accepted and ignored, like the original:
        positions are always past_len..past_len+T-1, so compare unpadded inputs."""
        del attention_mask, position_ids
        hidden, presents = self.transformer(input_ids, past_key_values, use_cache)
        return QWenOutput(logits=self.lm_head(hidden), past_key_values=presents)


def _check_attn_implementation(value: str) -> None:
    if value not in ATTN_IMPLEMENTATIONS:
        raise ModelError(
            f"Unknown attn_implementation '{value}'.",
            note=f"choose one of: {', '.join(ATTN_IMPLEMENTATIONS)}",
        )

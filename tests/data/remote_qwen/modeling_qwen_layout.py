"""Test fixture (written for parity's tests; no line is taken from any model's code): remote
modeling code with the *call structure* of the original Qwen-7B-Chat ``modeling_qwen.py``
(Qwen/Qwen-7B-Chat, public copy github.com/undefdev/Qwen-7B-Chat @ 04df5dd), which is what a
loader under transformers 5 trips on --

* the remote code's own base class ``QWenPreTrainedModel(PreTrainedModel)``, with an
  ``_init_weights`` that re-initializes every ``c_proj.weight``;
* ``QWenModel.forward`` -- the *inner* model, not the top class -- calls
  ``self.get_head_mask(head_mask, self.config.n_layer)`` (removed from ``PreTrainedModel``);
* every ``QWenAttention`` registers two non-persistent buffers in ``__init__``: ``bias``, a
  bool lower-triangular causal mask [1, 1, P, P] (P = ``n_positions``) that the attention
  reads, and ``masked_bias`` = -1e4 (float32, unused);
* the rotary ``inv_freq`` is a plain attribute of a ``RotaryEmbedding`` module, not a buffer.

The arithmetic is Qwen v1's (rotate-half rotary in float32, scores over a 0-d ``sqrt(d)`` in
the scores' dtype, SiLU on ``w2``, RMSNorm with eps inside the root).
"""
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from parity.models.qwen import QWenOutput

from .configuration_tinyqwen import TinyQWenConfig


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        h = x.float()
        return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class RotaryEmbedding(nn.Module):
    def __init__(self, dim, base):
        super().__init__()
        self.inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))  # an attribute, as the original

    def forward(self, n):
        freqs = torch.outer(torch.arange(n, device=self.inv_freq.device).float(), self.inv_freq.to(torch.float32))
        return torch.cat((freqs, freqs), dim=-1)[None, :, None, :]


def rotate(x, emb):
    half = x.shape[-1] // 2
    xf = x.float()
    rot = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * emb.cos() + rot * emb.sin()).type_as(x)


class QWenAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        p = config.n_positions
        self.register_buffer("bias", torch.tril(torch.ones((p, p), dtype=torch.bool)).view(1, 1, p, p),
                             persistent=False)
        self.register_buffer("masked_bias", torch.tensor(-1e4), persistent=False)
        self.heads, self.head_dim = config.n_head, config.kv_channels
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_head * config.kv_channels)
        self.c_proj = nn.Linear(config.n_head * config.kv_channels, config.n_embd, bias=not config.no_bias)
        self.rotary_emb = RotaryEmbedding(int(config.kv_channels * config.rotary_pct), config.rotary_emb_base)

    def forward(self, x, head_mask=None):
        b, t, _ = x.shape
        q, k, v = (y.view(b, t, self.heads, self.head_dim) for y in self.c_attn(x).split(self.heads * self.head_dim, -1))
        emb = self.rotary_emb(t)
        q, k = rotate(q, emb), rotate(k, emb)
        q, k, v = (y.permute(0, 2, 1, 3) for y in (q, k, v))
        w = torch.matmul(q, k.transpose(-1, -2))
        w = w / torch.full([], v.size(-1) ** 0.5, dtype=w.dtype, device=w.device)
        w = torch.where(self.bias[:, :, :t, :t], w, torch.full([], torch.finfo(w.dtype).min, dtype=w.dtype))
        out = torch.matmul(F.softmax(w, dim=-1).type(v.dtype), v)
        return (self.c_proj(out.permute(0, 2, 1, 3).reshape(b, t, -1)), None)


class QWenMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        half = config.ffn_hidden_size // 2
        self.w1 = nn.Linear(config.n_embd, half, bias=not config.no_bias)
        self.w2 = nn.Linear(config.n_embd, half, bias=not config.no_bias)
        self.c_proj = nn.Linear(half, config.n_embd, bias=not config.no_bias)

    def forward(self, x):
        return self.c_proj(self.w1(x) * F.silu(self.w2(x)))


class QWenBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = RMSNorm(config.n_embd, config.layer_norm_epsilon)
        self.attn = QWenAttention(config)
        self.ln_2 = RMSNorm(config.n_embd, config.layer_norm_epsilon)
        self.mlp = QWenMLP(config)

    def forward(self, x, head_mask=None):
        h = x + self.attn(self.ln_1(x), head_mask=head_mask)[0]
        return (h + self.mlp(self.ln_2(h)),)


class QWenPreTrainedModel(PreTrainedModel):
    config_class = TinyQWenConfig
    base_model_prefix = "transformer"

    def _init_weights(self, module):
        for name, p in module.named_parameters():
            if name.endswith("c_proj.weight"):
                p.data.normal_(mean=0.0, std=0.02)


class QWenModel(QWenPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.wte = nn.Embedding(config.padded_vocab_size or config.vocab_size, config.n_embd)
        self.h = nn.ModuleList([QWenBlock(config) for _ in range(config.n_layer)])
        self.ln_f = RMSNorm(config.n_embd, config.layer_norm_epsilon)
        self.post_init()

    def forward(self, input_ids, head_mask=None):
        head_mask = self.get_head_mask(head_mask, self.config.n_layer)  # the call transformers 5 lost
        x = self.wte(input_ids)
        for i, block in enumerate(self.h):
            x = block(x, head_mask=head_mask[i])[0]
        return self.ln_f(x)


class QWenLMHeadModel(QWenPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.transformer = QWenModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids, past_key_values=None, use_cache=False, attention_mask=None, **kwargs):
        return QWenOutput(logits=self.lm_head(self.transformer(input_ids)), past_key_values=None)

"""Eager attention in blocks of query rows: the reference's (and its precision twin's) attention.

A Hugging Face model's eager attention makes its tokens x tokens score tensor whole (per
head, float32 softmax): 2 GiB per tensor at 4096 tokens and 32 heads, a few of them alive at
once, while nothing else of the run grows with the square of the prompt. Softmax works row
by row, so the same family function (``eager_attention_forward`` of the model's own modeling
file) called on blocks of query rows, each with its rows of the mask, computes every output
row from the same operations on the same numbers; only the matmul's tiling can differ (a
float32 rounding, far below what parity judges). Below :data:`SCORE_ELEMENTS` scores per
call nothing is split at all.

:func:`apply` switches a model whose attention is eager to this implementation (registered
with transformers' attention and mask interfaces under :data:`NAME`); models without a
family eager function (remote code, parity's own modules) are left as they are.
"""
from __future__ import annotations

import sys
from typing import Any

import torch

#: the attention implementation's name in transformers' registries
NAME = "parity_eager_rows"
#: most score elements (batch x heads x query rows x keys) one eager call makes: 64 MiB in float32
SCORE_ELEMENTS = 1 << 24

_registered = False


def _family_eager(module: Any) -> Any:
    return getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)


def _dispatches(module: Any) -> bool:
    """Whether ``module``'s modeling file picks its attention through transformers' attention
    interface (which passes [B, heads, T, d] and takes [B, T, heads, d] back), and defines the
    eager function this one calls."""
    where = sys.modules.get(type(module).__module__)
    return getattr(where, "ALL_ATTENTION_FUNCTIONS", None) is not None and _family_eager(module) is not None


def attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """The family's eager attention over blocks of query rows (query [B, heads, T, d]; the
    output [B, T, heads, d] as eager returns it; no attention weights)."""
    eager = _family_eager(module)
    if eager is None:
        raise RuntimeError(f"{type(module).__module__} defines no eager_attention_forward")
    b, h, t = query.shape[0], query.shape[1], query.shape[2]
    rows = max(1, SCORE_ELEMENTS // max(1, b * h * key.shape[-2]))
    if rows >= t:
        return eager(module, query, key, value, attention_mask, *args, **kwargs)
    per_row_mask = attention_mask is not None and attention_mask.dim() >= 2 and attention_mask.shape[-2] == t
    outs = []
    for i in range(0, t, rows):
        mask = attention_mask[..., i:i + rows, :] if per_row_mask else attention_mask
        out, _ = eager(module, query[:, :, i:i + rows], key, value, mask, *args, **kwargs)
        outs.append(out)
    return torch.cat(outs, dim=1), None


def _register() -> bool:
    global _registered
    if _registered:
        return True
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask
    except ImportError:
        return False
    AttentionInterface.register(NAME, attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, eager_mask)
    _registered = True
    return True


def apply(model: Any) -> bool:
    """Give ``model`` eager attention in row blocks when its attention is transformers'
    eager one and its attention modules' family defines it; True when applied."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) not in ("eager", NAME) or not hasattr(model, "set_attn_implementation"):
        return False
    attention = [m for m in model.modules() if type(m).__name__.endswith("Attention")]
    if not attention or not all(_dispatches(m) for m in attention):
        return False
    if not _register():
        return False
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, KeyError, NotImplementedError, AttributeError):
        return False
    return getattr(config, "_attn_implementation", None) == NAME


def public_name(attn: Any) -> Any:
    """The attention a report names: row-block eager attention is eager attention."""
    return "eager" if attn == NAME else attn

"""Schemas of the model files parity reads: the subset of config.json it needs (per family)
and generation_config.json. Checked before a config reaches transformers or a model is built:
sizes are strict positive integers under hard bounds (``num_hidden_layers: 1e12`` would hang
inside transformers' config class), float keys take ints (``rms_norm_eps: 1``) but never
strings or NaN, and the keys a family cannot do without must be there (a config missing
them would silently build transformers' 7B defaults). Keys parity does not use pass through.
"""
from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from parity.errors import InputError, ModelError
from parity.validate import check

#: far above any released model, far below what hangs or exhausts memory
MAX_LAYERS = 1024
MAX_HIDDEN = 131072
MAX_HEADS = 4096
MAX_VOCAB = 1 << 22
MAX_INTERMEDIATE = 1 << 20
MAX_POSITIONS = 1 << 24
MAX_TOKEN_ID = (1 << 31) - 1


def _number(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError("need a number")
    if not math.isfinite(float(v)):
        raise ValueError("need a finite number")
    return float(v)


def _size(hi: int) -> Any:
    return Annotated[int, Field(strict=True, ge=1, le=hi)]


Layers, Hidden, Heads, Vocab = _size(MAX_LAYERS), _size(MAX_HIDDEN), _size(MAX_HEADS), _size(MAX_VOCAB)
Inter, Positions = _size(MAX_INTERMEDIATE), _size(MAX_POSITIONS)
Float = Annotated[float, BeforeValidator(_number)]
PosFloat = Annotated[float, BeforeValidator(_number), Field(gt=0)]
TokenId = Annotated[int, Field(strict=True, ge=0, le=MAX_TOKEN_ID)]
TokenIds = TokenId | Annotated[list[TokenId], Field(max_length=4096)] | None
StrictBool = Annotated[bool, Field(strict=True)]


class _Config(BaseModel):
    model_config = ConfigDict(extra="allow")

    model_type: str | None = None
    bos_token_id: TokenIds = None
    eos_token_id: TokenIds = None
    pad_token_id: TokenIds = None
    tie_word_embeddings: StrictBool | None = None


class HFConfig(_Config):
    """LLaMA, Qwen2 and SmolLM2 (transformers' LlamaConfig / Qwen2Config)."""

    vocab_size: Vocab
    hidden_size: Hidden
    num_attention_heads: Heads
    num_hidden_layers: Layers
    intermediate_size: Inter
    num_key_value_heads: Heads | None = None
    head_dim: Hidden | None = None
    max_position_embeddings: Positions | None = None
    rms_norm_eps: PosFloat | None = None
    rope_theta: PosFloat | None = None
    initializer_range: Float | None = None


class QwenConfig(_Config):
    """Qwen v1 (parity.models.qwen.QWenConfig)."""

    vocab_size: Vocab
    n_embd: Hidden
    n_head: Heads
    n_layer: Layers
    ffn_hidden_size: Inter
    kv_channels: Hidden | None = None
    padded_vocab_size: Vocab | None = None
    seq_length: Positions | None = None
    max_position_embeddings: Positions | None = None
    layer_norm_epsilon: PosFloat | None = None
    rotary_emb_base: PosFloat | None = None
    rotary_pct: Annotated[float, BeforeValidator(_number), Field(gt=0, le=1)] | None = None
    use_dynamic_ntk: StrictBool | None = None
    use_logn_attn: StrictBool | None = None
    no_bias: StrictBool | None = None


SCHEMAS: dict[str, type[_Config]] = {"qwen": QwenConfig, "qwen2": HFConfig, "llama": HFConfig}


def check_config(family: str, cfg: dict[str, Any], label: str) -> dict[str, Any]:
    """``cfg`` checked against its family's schema; returns it with float keys as floats
    (what transformers' strict config classes want). ModelError naming ``label`` otherwise."""
    schema = SCHEMAS.get(family, HFConfig)
    required = [n for n, f in schema.model_fields.items() if f.is_required()]
    model = check(schema, cfg, ModelError, label,
                  note=f"a {family} config needs {', '.join(required)} (positive integers); sizes are bounded "
                       f"(layers <= {MAX_LAYERS}, hidden <= {MAX_HIDDEN}, vocab <= {MAX_VOCAB})")
    out = dict(cfg)
    for name in schema.model_fields:
        value = getattr(model, name)
        if isinstance(value, float) and name in cfg:
            out[name] = value
    return out


class GenerationConfig(BaseModel):
    """generation_config.json: the keys parity compares; others pass through."""

    model_config = ConfigDict(extra="allow")

    eos_token_id: TokenIds = None
    pad_token_id: TokenIds = None
    bos_token_id: TokenIds = None
    do_sample: StrictBool | None = None
    temperature: Annotated[float, BeforeValidator(_number), Field(ge=0)] | None = None
    top_p: Annotated[float, BeforeValidator(_number), Field(ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(strict=True, ge=0)] | None = None
    repetition_penalty: PosFloat | None = None
    max_new_tokens: Annotated[int, Field(strict=True, ge=0)] | None = None
    max_length: Annotated[int, Field(strict=True, ge=0)] | None = None
    max_window_size: Annotated[int, Field(strict=True, ge=0)] | None = None


def check_generation_config(cfg: Any, label: str) -> dict[str, Any]:
    check(GenerationConfig, cfg, InputError, label,
          note="token ids are integers >= 0 (or lists of them); temperature, top_p, repetition_penalty numbers")
    return dict(cfg)

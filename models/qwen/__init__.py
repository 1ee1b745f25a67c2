"""Clean-room Qwen v1 (Qwen-7B-Chat, ``QWenLMHeadModel``) as a plain torch module.

Importing this package imports torch (the model code needs it) but nothing else heavy;
the tokenizer imports tiktoken only when a tokenizer is built.
"""
from __future__ import annotations

from typing import Any

from parity.models.qwen.modeling import (
    QWenCache,
    QWenConfig,
    QWenConfigError,
    QWenLMHeadModel,
    QWenOutput,
    ntk_alpha_for_length,
)
from parity.models.qwen.tokenizer import QWenTokenizer
from parity.errors import ModelError

__all__ = [
    "QWenCache",
    "QWenConfig",
    "QWenConfigError",
    "QWenLMHeadModel",
    "QWenOutput",
    "QWenTokenizer",
    "build",
    "make_config",
    "ntk_alpha_for_length",
]


def make_config(cfg: dict[str, Any]) -> QWenConfig:
    """The family's config from a config dict (its preset's ``[model] config``)."""
    try:
        return QWenConfig.from_dict(cfg)
    except (ValueError, TypeError) as exc:
        raise ModelError(f"Qwen v1 config: {exc}", note="config.json as the model's repository has it") from None


def build(cfg: dict[str, Any], attn: str) -> QWenLMHeadModel:
    """The family's model from a config dict (its preset's ``[model] build``)."""
    return QWenLMHeadModel(make_config(cfg), attn_implementation=attn)

"""Clean-room Qwen v1 (Qwen-7B-Chat, ``QWenLMHeadModel``) as a plain torch module.

Importing this package imports torch (the model code needs it) but nothing else heavy;
the tokenizer imports tiktoken only when a tokenizer is built.
"""
from __future__ import annotations

from parity.models.qwen.modeling import (
    QWenCache,
    QWenConfig,
    QWenConfigError,
    QWenLMHeadModel,
    QWenOutput,
    ntk_alpha_for_length,
)
from parity.models.qwen.tokenizer import QWenTokenizer

__all__ = [
    "QWenCache",
    "QWenConfig",
    "QWenConfigError",
    "QWenLMHeadModel",
    "QWenOutput",
    "QWenTokenizer",
    "ntk_alpha_for_length",
]

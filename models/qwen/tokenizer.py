"""Qwen v1 tokenizer: a ``tiktoken`` BPE built from a ``qwen.tiktoken`` file.

The file has one ``<base64 token bytes> <rank>`` per line. Special tokens follow the mergeable
ranks: ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``, then ``<|extra_0|>`` ...
``<|extra_204|>`` (151643, 151644, 151645, ... with the real 151643-entry vocab). tiktoken is
imported only inside :meth:`QWenTokenizer.from_file`.
"""
from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from parity.errors import InputError

QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
N_EXTRA = 205
SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, IM_START, IM_END) + tuple(
    f"<|extra_{i}|>" for i in range(N_EXTRA)
)


class TiktokenMissingError(InputError, ImportError):
    """tiktoken is needed to build the Qwen tokenizer."""


def read_ranks(path: str | Path) -> dict[bytes, int]:
    """Parse a ``.tiktoken`` file into ``{token bytes: rank}``; ranks must be 0..n-1."""
    ranks: dict[bytes, int] = {}
    text = Path(path).read_text(encoding="ascii")
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as exc:
            raise InputError(f"{path}:{lineno}: not '<base64> <rank>': {line[:60]!r}") from exc
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise InputError(f"{path}: ranks are not unique and contiguous from 0.")
    return ranks


def special_token_ids(n_ranks: int) -> dict[str, int]:
    return {tok: n_ranks + i for i, tok in enumerate(SPECIAL_TOKENS)}


class QWenTokenizer:
    """Thin wrapper over a ``tiktoken.Encoding`` with Qwen's pattern and special tokens."""

    def __init__(self, encoding: Any, special_tokens: dict[str, int]) -> None:
        self.encoding = encoding
        self.special_tokens = dict(special_tokens)
        self._special_ids = frozenset(self.special_tokens.values())

    @classmethod
    def from_file(cls, path: str | Path) -> QWenTokenizer:
        try:
            import tiktoken
        except ImportError as exc:
            raise TiktokenMissingError(
                "The Qwen tokenizer needs the 'tiktoken' package, which is not installed.",
                note="pip install tiktoken  (or: pip install 'parity-debugger[tokenizers]')",
            ) from exc
        ranks = read_ranks(path)
        specials = special_token_ids(len(ranks))
        encoding = tiktoken.Encoding(
            "qwen", pat_str=QWEN_PATTERN, mergeable_ranks=ranks, special_tokens=specials
        )
        return cls(encoding, specials)

    @property
    def eos_token_id(self) -> int:
        return self.special_tokens[ENDOFTEXT]

    @property
    def im_start_id(self) -> int:
        return self.special_tokens[IM_START]

    @property
    def im_end_id(self) -> int:
        return self.special_tokens[IM_END]

    @property
    def vocab_size(self) -> int:
        return int(self.encoding.n_vocab)

    def encode(
        self, text: str, allowed_special: Literal["all"] | Iterable[str] = "all"
    ) -> list[int]:
        """Special-token text not in ``allowed_special`` is encoded as ordinary text."""
        allowed = allowed_special if allowed_special == "all" else set(allowed_special)
        return list(self.encoding.encode(text, allowed_special=allowed, disallowed_special=()))

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        ids = [int(i) for i in ids]
        if skip_special:
            ids = [i for i in ids if i not in self._special_ids]
        return str(self.encoding.decode(ids, errors="replace"))

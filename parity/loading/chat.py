"""Chat formats, stop tokens and token display per family.

The preset's ``[chat]`` table names the template (``chatml`` for Qwen v1 / Qwen2,
``llama2`` for LLaMA), the stop tokens (texts) and the special-token ids. A tokenizer, when
there is one, adds its own special tokens and renders real text; without one (the tiny
presets) a chat prompt is wrapped with the special ids only and texts are shown as id lists.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from parity.errors import InputError

DEFAULT_SYSTEM = "You are a helpful assistant."

# Text templates: {system} and {prompt} are filled in, then the text is encoded with special
# tokens allowed.
TEMPLATES: dict[str, str] = {
    "chatml": "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n",
    "llama2": "<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{prompt} [/INST]",
}

# Without a tokenizer: the special tokens placed before / after the prompt ids.
ID_WRAPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "chatml": (("<|im_start|>",), ("<|im_end|>", "<|im_start|>")),
    "llama2": (("<s>",), ()),
}


@dataclass
class Vocab:
    """Special tokens (text <-> id) and, optionally, a tokenizer for text."""

    specials: dict[str, int] = field(default_factory=dict)
    tokenizer: Any = None

    @property
    def names(self) -> dict[int, str]:
        return {v: k for k, v in self.specials.items()}

    def token_id(self, text: str) -> int | None:
        """The id of a special token text, or of a text that is exactly one token."""
        if text in self.specials:
            return self.specials[text]
        tok = self.tokenizer
        if tok is None:
            return None
        conv = getattr(tok, "convert_tokens_to_ids", None)
        if conv is not None:
            tid = conv(text)
            unk = getattr(tok, "unk_token_id", None)
            if isinstance(tid, int) and tid != unk:
                return tid
        ids = _encode(tok, text)
        return ids[0] if len(ids) == 1 else None

    def label(self, tid: int | None) -> str:
        """``151645 <|im_end|>`` for specials, the bare id otherwise."""
        if tid is None:
            return "-"
        name = self.names.get(tid)
        return f"{tid} {name}" if name else str(tid)

    def text(self, ids: Sequence[int]) -> str:
        """Display text: special tokens stripped, as the chat format expects; an id list
        when there is no tokenizer."""
        if self.tokenizer is None:
            return "[" + ", ".join(self.label(t) for t in ids) + "]"
        return _decode(self.tokenizer, list(ids))


def vocab_for(chat: dict[str, Any], tokenizer: Any = None) -> Vocab:
    specials = {str(k): int(v) for k, v in chat.get("special_tokens", {}).items()}
    if tokenizer is not None:
        specials.update(_tokenizer_specials(tokenizer))
    return Vocab(specials, tokenizer)


def _tokenizer_specials(tok: Any) -> dict[str, int]:
    own = getattr(tok, "special_tokens", None)
    if isinstance(own, dict):  # QWenTokenizer
        return {str(k): int(v) for k, v in own.items()}
    out: dict[str, int] = {}
    for text in getattr(tok, "all_special_tokens", []) or []:
        tid = tok.convert_tokens_to_ids(text)
        if isinstance(tid, int):
            out[text] = tid
    return out


def _encode(tok: Any, text: str) -> list[int]:
    try:
        return list(tok.encode(text, add_special_tokens=False))
    except TypeError:
        return list(tok.encode(text))


def _decode(tok: Any, ids: list[int]) -> str:
    """Text of ``ids``; an id the tokenizer does not know (a model vocabulary larger than the
    tokenizer's, padded rows) shows as ``<id N>`` instead of failing inside the tokenizer."""
    n = _vocab_len(tok)
    if n is not None and any(not 0 <= t < n for t in ids):
        out: list[str] = []
        run: list[int] = []
        for t in ids:
            if 0 <= t < n:
                run.append(t)
                continue
            if run:
                out.append(_decode(tok, run))
                run = []
            out.append(f"<id {t}>")
        if run:
            out.append(_decode(tok, run))
        return "".join(out)
    try:
        return str(tok.decode(ids, skip_special_tokens=True))
    except TypeError:
        return str(tok.decode(ids, skip_special=True))


def _vocab_len(tok: Any) -> int | None:
    try:
        return int(len(tok))
    except TypeError:
        v = getattr(tok, "vocab_size", None)
        return v if isinstance(v, int) else None


def _template_ids(out: Any) -> list[int]:
    """apply_chat_template's ids: transformers 4 returns a list, 5 a BatchEncoding (a mapping)."""
    if hasattr(out, "keys") and "input_ids" in out:
        out = out["input_ids"]
    ids = list(out)
    if ids and isinstance(ids[0], list):  # a batch of one
        ids = ids[0]
    return [int(t) for t in ids]


def resolve_stop_tokens(texts: Iterable[str], vocab: Vocab, where: str = "--stop-token") -> list[int]:
    """Stop-token texts to ids; an unknown text is an input error naming the valid ones."""
    ids = []
    for text in texts:
        tid = vocab.token_id(text)
        if tid is None:
            raise InputError(f"{where} '{text}' is not a token of this model.",
                             note="known special tokens: " + (", ".join(vocab.specials) or "none"))
        ids.append(tid)
    return ids


def wrap_prompt(template: str, vocab: Vocab, *, prompt: str | None, ids: list[int] | None,
                system: str | None = None) -> tuple[list[int], str]:
    """Prompt ids in the family's chat format, and how they were made (for the report).
    ``system`` None: a tokenizer's own template adds its own default system message (if it
    has one); text templates use DEFAULT_SYSTEM."""
    if template not in TEMPLATES:
        raise InputError(f"unknown chat template '{template}'.", note="valid templates: " + ", ".join(TEMPLATES))
    tok = vocab.tokenizer
    if tok is not None and prompt is not None:
        apply = getattr(tok, "apply_chat_template", None)
        if apply is not None and getattr(tok, "chat_template", None):
            msgs = ([] if system is None else [{"role": "system", "content": system}]) + [{"role": "user", "content": prompt}]
            ids = _template_ids(_apply_template(apply, msgs))
            if not ids:
                raise InputError("the tokenizer's chat template renders the prompt as no tokens.", note=TEMPLATE_NOTE)
            return ids, "tokenizer chat_template"
        text = TEMPLATES[template].format(system=DEFAULT_SYSTEM if system is None else system, prompt=prompt)
        return _encode(tok, text), f"{template} text template"
    body = list(ids if ids is not None else _encode(tok, prompt or ""))
    before, after = ID_WRAPS[template]
    pre = resolve_stop_tokens(before, vocab, "chat template token")
    post = resolve_stop_tokens(after, vocab, "chat template token")
    return pre + body + post, f"{template} special ids only (no tokenizer: role text omitted)"


#: a chat template renders a short prompt: more time than this is a template that loops
TEMPLATE_SECONDS = 10.0
TEMPLATE_NOTE = ("the tokenizer's chat_template (tokenizer_config.json) is at fault: fix it, or give the prompt "
                 "without the chat format (no --chat; eval: --raw)")


class _TemplateTimeout(Exception):
    pass


def _apply_template(apply: Any, msgs: list[dict[str, str]]) -> Any:
    """The tokenizer's chat template rendered (transformers renders it in jinja2's
    ImmutableSandboxedEnvironment: transformers/utils/chat_template_utils.py, _compile_jinja_template
    @ v5.25.0): whatever the template does -- raise, fail to parse, reach for what the sandbox
    forbids, loop, exhaust memory -- is an input error about the template."""
    import signal
    import threading

    timed = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    old: Any = None
    if timed:
        def _alarm(signum: int, frame: Any) -> None:
            raise _TemplateTimeout()

        old = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, TEMPLATE_SECONDS)
    try:
        return apply(msgs, add_generation_prompt=True, tokenize=True)
    except _TemplateTimeout:
        raise InputError(f"the tokenizer's chat template did not finish within {TEMPLATE_SECONDS:.0f} s.",
                         note=TEMPLATE_NOTE) from None
    except (MemoryError, RecursionError) as exc:
        raise InputError(f"the tokenizer's chat template ran out of {'memory' if isinstance(exc, MemoryError) else 'stack'}.",
                         note=TEMPLATE_NOTE) from None
    except Exception as exc:  # noqa: BLE001 - jinja2's TemplateError family, sandbox SecurityError, the template's own raise
        text = " ".join(str(exc).split())[:200]
        where = f" (line {exc.lineno})" if isinstance(getattr(exc, "lineno", None), int) else ""
        raise InputError(f"the tokenizer's chat template fails{where}: {type(exc).__name__}"
                         f"{': ' + text if text else ''}.", note=TEMPLATE_NOTE) from None
    finally:
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old if old is not None else signal.SIG_DFL)

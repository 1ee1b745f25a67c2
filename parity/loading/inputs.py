"""Input token ids: seeded (--tokens N), from a file (--input-ids), or a prompt through a
tokenizer (--prompt, with the checkpoint's tokenizer or --tokenizer PATH), wrapped in the
model's chat format with --chat (:func:`resolve_inputs`)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from parity.errors import InputError, ParityError
from parity.loading.limits import check_tokens

if TYPE_CHECKING:
    from parity.loading.source import ModelSource
    from parity.options import RunOptions

DEFAULT_TOKENS = 32


def seeded_ids(n: int, vocab: int, seed: int, high: int | None = None) -> list[int]:
    import torch

    if n < 1:
        raise InputError(f"--tokens {n}: need at least 1 token.", note="e.g. --tokens 32")
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, min(vocab, high or vocab), (n,), generator=gen).tolist()


def read_ids(path: str | Path) -> list[int]:
    from parity.validate import parse_json, read_text

    p = Path(path)
    if not p.is_file():
        raise InputError(f"--input-ids file '{p}' does not exist.", note="give a .npy, .json or .txt file of token ids")
    label = f"--input-ids file '{p}'"
    if p.suffix == ".npy":
        return ids_from_array(_load_npy(p), label)
    text = read_text(p, InputError, "--input-ids file")
    if p.suffix == ".json":
        data: Any = parse_json(text, InputError, label)
        if isinstance(data, dict):
            data = data.get("input_ids")
    else:
        try:
            data = [int(t) for t in text.replace(",", " ").split()]
        except ValueError as exc:
            raise InputError(f"cannot read token ids from '{p}': {exc}",
                             note="a .npy array, a JSON list, or whitespace-separated integers") from None
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], list):
        data = data[0]
    if not isinstance(data, list) or not data or not all(isinstance(t, int) and not isinstance(t, bool) for t in data):
        raise InputError(f"'{p}' does not hold a non-empty list of integer token ids.", note=NPY_NOTE)
    return data


NPY_NOTE = "a .npy array of integers (no pickles), a JSON list, or whitespace-separated integers"


def _load_npy(p: Path) -> Any:
    """A .npy file's array, its header read first: integer dtype, and a shape the file's bytes
    hold (a 100-byte file claiming 10^10 ids allocates nothing)."""
    import numpy as np
    from numpy.lib import format as npy

    try:
        with p.open("rb") as fh:
            version = npy.read_magic(fh)
            read = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}.get(version)
            if read is None:
                raise ValueError(f".npy format version {version[0]}.{version[1]}")
            shape, _fortran, dtype = read(fh)
            left = p.stat().st_size - fh.tell()
    except Exception as exc:  # noqa: BLE001 - numpy raises ValueError, TokenError, SyntaxError... on a bad header
        raise InputError(f"cannot read token ids from '{p}': not a readable .npy file ({_one_line(exc)}).",
                         note=NPY_NOTE) from None
    if dtype.kind not in "iu":
        raise InputError(f"--input-ids file '{p}' holds {dtype} values, not integer token ids.",
                         note="token ids are an integer array (int32/int64)")
    count = 1
    for d in shape:
        count *= d
    if count * dtype.itemsize > left:
        raise InputError(f"--input-ids file '{p}' claims shape {list(shape)}, more than its {left} bytes of data hold.",
                         note="the file is truncated or damaged: write it again with numpy.save")
    try:
        return np.load(p, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - a damaged file numpy cannot read
        raise InputError(f"cannot read token ids from '{p}': {_one_line(exc)}", note=NPY_NOTE) from None


def ids_from_array(arr: Any, label: str) -> list[int]:
    """Token ids from a numpy array: integers only (NaN, floats, complex, bool, dates and
    durations refused), one sequence ([T] or [1, T])."""
    import numpy as np

    arr = np.asarray(arr)
    if arr.dtype.kind not in "iu":
        raise InputError(f"{label} holds {arr.dtype} values, not integer token ids.",
                         note="token ids are an integer array (int32/int64)")
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1 or arr.size == 0:
        raise InputError(f"{label} has shape {list(arr.shape)}; token ids are one non-empty sequence ([T] or [1, T]).",
                         note="save one sequence: numpy.save('ids.npy', numpy.array(ids))")
    return [int(x) for x in arr.tolist()]


def check_ids(ids: list[int], vocab: int) -> list[int]:
    bad = [t for t in ids if t < 0 or t >= vocab]
    if bad:
        raise InputError(f"token id {bad[0]} is outside the vocabulary [0, {vocab}).",
                         note="ids from another model's tokenizer? give ids of this model's vocabulary")
    return ids


def load_tokenizer(family: str, checkpoint: Path | None, tokenizer: str | None) -> Any:
    """The tokenizer for --prompt: ``tokenizer`` path first, then the checkpoint's."""
    where = Path(tokenizer) if tokenizer else checkpoint
    if where is None:
        raise InputError(
            "--prompt needs a tokenizer, and the embedded preset has none.",
            note="use --tokens N or --input-ids FILE, or give --checkpoint DIR / --tokenizer PATH with a tokenizer",
        )
    if family == "qwen":
        tik = where if where.is_file() else where / "qwen.tiktoken"
        if not tik.is_file():
            raise InputError(f"no qwen.tiktoken in '{where}'.", note="Qwen v1 prompts need the checkpoint's qwen.tiktoken (and the tiktoken package)")
        from parity.models.qwen.tokenizer import QWenTokenizer

        try:
            return QWenTokenizer.from_file(tik)
        except ParityError:
            raise
        except ImportError as exc:
            raise InputError(str(exc), note="pip install tiktoken") from None
        except Exception as exc:  # noqa: BLE001 - an empty, damaged or non-text file
            raise InputError(f"cannot read tokenizer '{tik}': {_one_line(exc)}",
                             note="a qwen.tiktoken file: one '<base64 token> <rank>' per line") from None
    if not any((where / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        raise InputError(f"no tokenizer files in '{where}'.", note="expected tokenizer.json or tokenizer.model")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(where))
    except Exception as exc:  # noqa: BLE001 - empty, truncated or non-UTF-8 tokenizer files raise many types
        raise InputError(f"cannot load the tokenizer in '{where}': {_one_line(exc)}",
                         note="tokenizer.json (UTF-8 JSON) or tokenizer.model as the model's repository has them") from None


def check_tokenizer(tok: Any, given: str | None, vocab: int) -> Any:
    """A --tokenizer the user gave must be the model's: one whose vocabulary is less than half
    the model's embedding rows belongs to another model."""
    from parity.loading.chat import _vocab_len

    n = _vocab_len(tok) if given else None
    if n is not None and 2 * n < vocab:
        raise InputError(f"--tokenizer {given}: its vocabulary has {n} tokens, the model's embedding {vocab} rows.",
                         note="give the tokenizer of this model (the checkpoint's own tokenizer files)")
    return tok


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def encode(tok: Any, prompt: str) -> list[int]:
    ids = tok.encode(prompt)
    if not ids:
        raise InputError("the prompt encodes to no tokens.", note="give a prompt with some text")
    return list(ids)


def resolve_inputs(opts: RunOptions, source: ModelSource) -> list[int]:
    """The run's token ids: --tokens (seeded), --prompt (the tokenizer's) or --input-ids,
    wrapped in the model's chat format with --chat."""
    if opts.chat:
        ids, _ = chat_ids(opts, source, load_vocab(opts, source))
        return ids
    return plain_ids(opts, source)


def plain_ids(opts: RunOptions, source: ModelSource) -> list[int]:
    given = [x for x in (opts.tokens, opts.prompt, opts.input_ids) if x is not None]
    if len(given) > 1:
        raise ParityError("give one of --tokens, --prompt, --input-ids.", note="they are three ways to give the input")
    vocab = source.vocab_size
    if opts.prompt is not None:
        tok = check_tokenizer(load_tokenizer(source.family.name, source.checkpoint, opts.tokenizer), opts.tokenizer, vocab)
        ids = encode(tok, opts.prompt)
        check_tokens(len(ids), source.config_dict, "--prompt")
        return check_ids(ids, vocab)
    if opts.input_ids is not None:
        ids = read_ids(opts.input_ids)
        check_tokens(len(ids), source.config_dict, f"--input-ids {opts.input_ids}")
        return check_ids(ids, vocab)
    specials = list(source.preset.chat.get("special_tokens", {}).values())
    high = min(specials) if specials and min(specials) > vocab // 2 else None
    n = DEFAULT_TOKENS if opts.tokens is None else opts.tokens
    check_tokens(n, source.config_dict, f"--tokens {n}")
    ids = seeded_ids(n, vocab, source.seed, high)
    if getattr(source, "activations", "plain") == "trained":  # the start token first, delimiters between
        from parity.loading.activations import TrainedSpec, trained_ids

        spec = TrainedSpec.from_preset(source.preset.activations.get("trained"), source.family.name)
        ids = trained_ids(ids, spec, vocab, source.seed)
    return ids


def load_vocab(opts: RunOptions, source: ModelSource) -> Any:
    """The special tokens and (when there is one) the tokenizer, for chat formats and texts."""
    from parity.loading import chat as chatfmt

    tok = None
    if opts.prompt is not None or opts.tokenizer is not None:
        tok = check_tokenizer(load_tokenizer(source.family.name, source.checkpoint, opts.tokenizer), opts.tokenizer,
                              source.vocab_size)
    elif source.checkpoint is not None:
        try:
            tok = load_tokenizer(source.family.name, source.checkpoint, None)
        except InputError:
            tok = None  # a checkpoint without tokenizer files: ids only
    return chatfmt.vocab_for(source.preset.chat, tok)


def chat_ids(opts: RunOptions, source: ModelSource, vocab: Any) -> tuple[list[int], str]:
    """The prompt (text, or ids) in the model's chat format, and how it was made."""
    from parity.loading import chat as chatfmt

    template = source.preset.chat.get("template", "chatml")
    raw = None if opts.prompt is not None else plain_ids(opts, source)
    ids, how = chatfmt.wrap_prompt(template, vocab, prompt=opts.prompt, ids=raw, system=opts.system)
    return check_ids(ids, source.vocab_size), how

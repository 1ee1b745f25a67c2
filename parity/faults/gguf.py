"""GGUF faults: conversion bugs users hit, written into a copy of the GGUF file that
``--candidate llamacpp`` runs (target "gguf"; the reference keeps the right weights).

* ``gguf-qk-permute[@N]``: the q/k rows of block N (every block without @) in the wrong
  rotary layout -- the converter's permutation for llama.cpp's pair-rotating ("norm") rope
  left out where it is needed (``llama``) or applied where it is not (``qwen2``). What a
  converter that guesses the checkpoint's layout wrong produces.
* ``gguf-norm-eps``: ``<arch>.attention.layer_norm_rms_epsilon`` written as 0.1 (every norm).
* ``gguf-eos-id``: ``tokenizer.ggml.eos_token_id`` set to another token (the BOS id, or 0),
  so the engine's end-of-generation set differs from the model's.

Each edits the copy in place through gguf-py's reader (``r+``: fields and tensors are memory
maps); imported only when a GGUF fault is used.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from parity.errors import UsageError
from parity.faults.registry import FaultSpec, fault

WRONG_RMS_EPS = 0.1


def _open(path: Path) -> Any:
    from gguf import GGUFReader

    return GGUFReader(str(path), "r+")


def _scalar(reader: Any, key: str) -> Any:
    f = reader.fields.get(key)
    return None if f is None else f.parts[f.data[0]][0]


def _set(reader: Any, key: str, value: Any) -> Any:
    f = reader.fields.get(key)
    if f is None:
        raise UsageError(f"the GGUF file has no '{key}' to alter.")
    old = f.parts[f.data[0]][0].item()
    f.parts[f.data[0]][0] = value
    return old


def _arch(reader: Any) -> str:
    f = reader.fields["general.architecture"]
    return bytes(f.parts[f.data[0]]).decode()


def qk_permutation(rows: int, heads: int) -> Any:
    """Row order of llama.cpp's converter for q/k of ``heads`` heads (LlamaModel.permute)."""
    import numpy as np

    hd = rows // heads
    return np.arange(rows).reshape(heads, 2, hd // 2).swapaxes(1, 2).reshape(-1)


def qk_permute(path: Path, block: int | None, norm_rope_archs: tuple[str, ...] = ("llama",)) -> str:
    import numpy as np

    r = _open(path)
    arch = _arch(r)
    heads = int(_scalar(r, f"{arch}.attention.head_count"))
    kv = _scalar(r, f"{arch}.attention.head_count_kv")
    kv = heads if kv is None else int(kv)
    undo = arch in norm_rope_archs  # the converter permuted: undo it; else permute where it did not
    done = []
    for t in r.tensors:
        parts = t.name.split(".")
        if len(parts) < 3 or parts[0] != "blk" or parts[2] not in ("attn_q", "attn_k"):
            continue
        if block is not None and int(parts[1]) != block:
            continue
        perm = qk_permutation(t.data.shape[0], heads if parts[2] == "attn_q" else kv)
        order = np.argsort(perm) if undo else perm
        t.data[...] = np.array(t.data)[order]
        done.append(t.name)
    r.data.flush()
    if not done:
        raise UsageError("fault 'gguf-qk-permute' found no blk.N.attn_q / attn_k tensors to alter.")
    return f"gguf-qk-permute: {'undid' if undo else 'applied'} the q/k pair permutation in {len(done)} tensors ({arch})"


def norm_eps(path: Path) -> str:
    r = _open(path)
    key = f"{_arch(r)}.attention.layer_norm_rms_epsilon"
    old = _set(r, key, WRONG_RMS_EPS)
    r.data.flush()
    return f"gguf-norm-eps: {key} {old:g} -> {WRONG_RMS_EPS:g}"


def eos_id(path: Path) -> str:
    r = _open(path)
    eos = _scalar(r, "tokenizer.ggml.eos_token_id")
    if eos is None:
        raise UsageError("fault 'gguf-eos-id': the GGUF file has no tokenizer.ggml.eos_token_id.")
    bos = _scalar(r, "tokenizer.ggml.bos_token_id")
    new = int(bos) if bos is not None and int(bos) != int(eos) else (0 if int(eos) != 0 else 1)
    _set(r, "tokenizer.ggml.eos_token_id", new)
    r.data.flush()
    return f"gguf-eos-id: tokenizer.ggml.eos_token_id {int(eos)} -> {new}"


def apply(specs: list[FaultSpec], path: Path) -> list[str]:
    """Apply GGUF faults to the file ``path`` (a copy); returns what was done."""
    return [s.fault.apply(path, s, None) for s in specs if s.fault.target == "gguf"]  # type: ignore[func-returns-value]


fault("gguf-qk-permute", "GGUF q/k rows in the wrong rotary layout (converter's pair permutation left out / misapplied); "
      "--candidate llamacpp", target="gguf")(lambda path, spec, ctx: qk_permute(path, spec.block))
fault("gguf-norm-eps", f"GGUF metadata layer_norm_rms_epsilon = {WRONG_RMS_EPS:g}; --candidate llamacpp",
      target="gguf", per_block=False)(lambda path, spec, ctx: norm_eps(path))
fault("gguf-eos-id", "GGUF metadata tokenizer.ggml.eos_token_id set to another token (BOS); --candidate llamacpp",
      target="gguf", per_block=False)(lambda path, spec, ctx: eos_id(path))

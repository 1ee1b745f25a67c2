"""More cases of the bad-input catalogue (tests/bad_inputs.py holds the Kit and the first ones):
GGUF headers and metadata, full and read-only disks for every writer, concurrent writers,
eval sets, chat templates, report schemas, options that do nothing alone, .npy token ids and
pickled weights. ``make_more`` makes what these cases share (a llama checkpoint with a small
tokenizer and a chat template, a generate report), once per session."""
from __future__ import annotations

import importlib.util
import json
import os
import pickle
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bad_inputs import DEEP, Kit, _report, _set

HAS = {m: importlib.util.find_spec(m) is not None for m in ("rouge_score", "modelopt", "gguf", "accelerate", "llama_cpp", "onnx",
                                                        "onnxruntime")}
CHATML = ("{% for message in messages %}{{'<s>' + message['role'] + ' ' + message['content'] + '</s>'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<s>assistant ' }}{% endif %}")
WORDS = ["<unk>", "<s>", "</s>", "system", "user", "assistant", "hello", "world", "the", "a", "summarize", "article"]
Case = tuple[Callable[[Kit], list[str]], tuple[str, ...]]


def make_more(base: Path) -> dict[str, Path]:
    """A llama checkpoint with a word-level tokenizer and a chat template (``chat``), and the
    report folder of a `parity generate` run (``gen``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    ck = base / "chat"
    ck.mkdir()
    shutil.copy(base / "llama" / "config.json", ck / "config.json")
    os.symlink(base / "llama" / "model.safetensors", ck / "model.safetensors")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(ck / "tokenizer.json"))
    (ck / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
         "chat_template": CHATML}))
    from parity.cli import main

    assert main(["generate", "-q", "--tokens", "4", "--max-new-tokens", "2", "--out", str(base / "gen")]) == 0
    return {"chat": ck, "gen": base / "gen"}


# -- GGUF files written by hand (no gguf package needed) ----------------------------------------------

HIDDEN, HEADS, KV, FFN, VOCAB = 32, 4, 2, 64, 32
U32, I32, F32, STR, ARR, U64 = 4, 5, 6, 8, 9, 10


def _s(text: str | bytes) -> bytes:
    b = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(b)) + b


def _kv(key: str, vtype: int, value: Any) -> bytes:
    head = _s(key) + struct.pack("<I", vtype)
    if vtype == STR:
        return head + _s(value)
    if vtype == ARR:
        etype, items = value
        body = b"".join(_s(v) if etype == STR else struct.pack("<" + {U32: "I", F32: "f", I32: "i"}[etype], v) for v in items)
        return head + struct.pack("<IQ", etype, len(items)) + body
    return head + struct.pack("<" + {U32: "I", I32: "i", F32: "f", U64: "Q"}[vtype], value)


def model_spec(blocks: int = 2) -> tuple[dict[str, tuple[int, Any]], dict[str, list[int]]]:
    """A tiny llama: its metadata (key -> (type, value)) and tensors (name -> GGUF dims)."""
    kv = {"general.architecture": (STR, "llama"), "general.name": (STR, "tiny"), "llama.block_count": (U32, blocks),
          "llama.context_length": (U32, 128), "llama.embedding_length": (U32, HIDDEN),
          "llama.feed_forward_length": (U32, FFN), "llama.attention.head_count": (U32, HEADS),
          "llama.attention.head_count_kv": (U32, KV), "llama.rope.freq_base": (F32, 10000.0),
          "llama.attention.layer_norm_rms_epsilon": (F32, 1e-5), "llama.vocab_size": (U32, VOCAB)}
    hd = HIDDEN // HEADS
    t = {"token_embd.weight": [HIDDEN, VOCAB], "output_norm.weight": [HIDDEN]}
    for i in range(blocks):
        t.update({f"blk.{i}.attn_norm.weight": [HIDDEN], f"blk.{i}.ffn_norm.weight": [HIDDEN],
                  f"blk.{i}.attn_q.weight": [HIDDEN, HIDDEN], f"blk.{i}.attn_k.weight": [HIDDEN, KV * hd],
                  f"blk.{i}.attn_v.weight": [HIDDEN, KV * hd], f"blk.{i}.attn_output.weight": [HIDDEN, HIDDEN],
                  f"blk.{i}.ffn_gate.weight": [HIDDEN, FFN], f"blk.{i}.ffn_up.weight": [HIDDEN, FFN],
                  f"blk.{i}.ffn_down.weight": [FFN, HIDDEN]})
    return kv, t


def gguf_bytes(kv: dict[str, tuple[int, Any]], tensors: dict[str, list[int]], version: int = 3,
               counts: tuple[int, int] | None = None, ggml_type: int = 0, offsets: dict[str, int] | None = None,
               truncate: int | None = None) -> bytes:
    """A GGUF file of F32 tensors (zeros): ``counts`` overrides the tensor and key/value counts."""
    head = b"GGUF" + struct.pack("<I", version)
    n_t, n_kv = counts if counts is not None else (len(tensors), len(kv))
    head += struct.pack("<QQ", n_t, n_kv)
    head += b"".join(_kv(k, t, v) for k, (t, v) in kv.items())
    data_off, infos = 0, b""
    for name, dims in tensors.items():
        n = 4
        for d in dims:
            n *= d
        n = n if 0 <= n <= 1 << 20 else 0  # a shape no test file needs the data of
        off = (offsets or {}).get(name, data_off)
        infos += _s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", ggml_type, off)
        data_off = -(-(data_off + n) // 32) * 32
    blob = head + infos
    blob += b"\0" * (-len(blob) % 32) + b"\0" * data_off
    return blob[:truncate] if truncate is not None else blob


def _gguf_case(make: Callable[[], bytes], *needles: str, extra: tuple[str, ...] = ()) -> Case:
    def build(k: Kit) -> list[str]:
        (k.tmp / "cache").mkdir()
        k.env("PARITY_CACHE", str(k.tmp / "cache"))
        return ["run", "-q", "--out", str(k.out), "--model", "llama", "--checkpoint", str(k.file("m.gguf", make())), *extra]
    return build, needles


def _mutated(change: Callable[[dict[str, Any], dict[str, Any]], Any], **kw: Any) -> Callable[[], bytes]:
    def make() -> bytes:
        kv, t = model_spec()
        change(kv, t)
        return gguf_bytes(kv, t, **kw)
    return make


def _drop(*names: str) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    def change(kv: dict[str, Any], t: dict[str, Any]) -> None:
        for n in names:
            (kv if n in kv else t).pop(n)
    return change


def _meta(key: str, vtype: int, value: Any) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    return lambda kv, t: kv.__setitem__(key, (vtype, value))


def _tensor(name: str, dims: list[int] | None) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    return lambda kv, t: t.pop(name) if dims is None else t.__setitem__(name, dims)


def _raw(blob: bytes) -> Callable[[], bytes]:
    return lambda: blob


_HDR = b"GGUF" + struct.pack("<I", 3)
GGUF_CASES: dict[str, Case] = {
    "gguf-magic-only": _gguf_case(_raw(b"GGUF"), "not a GGUF file"),
    "gguf-empty-file": _gguf_case(_raw(b""), "not a GGUF file"),
    "gguf-version-0": _gguf_case(_raw(b"GGUF" + struct.pack("<IQQ", 0, 0, 0)), "version 0"),
    "gguf-version-99": _gguf_case(_raw(b"GGUF" + struct.pack("<IQQ", 99, 0, 0)), "version 99"),
    "gguf-tensor-count-1e9": _gguf_case(_raw(_HDR + struct.pack("<QQ", 10**9, 0) + b"\0" * 1000), "tensor count"),
    "gguf-tensor-count-2e63": _gguf_case(_raw(_HDR + struct.pack("<QQ", 1 << 63, 0)), "tensor count"),
    "gguf-kv-count-1e12": _gguf_case(_raw(_HDR + struct.pack("<QQ", 0, 10**12) + b"\0" * 1000), "key/value count"),
    "gguf-key-length-2e40": _gguf_case(_raw(_HDR + struct.pack("<QQQ", 0, 1, 1 << 40) + b"\0" * 100), "length of a key"),
    "gguf-string-length-huge": _gguf_case(_raw(_HDR + struct.pack("<QQ", 0, 1) + _s("general.name")
                                               + struct.pack("<IQ", STR, 1 << 50)), "length of the value"),
    "gguf-array-1e12-u8": _gguf_case(_raw(_HDR + struct.pack("<QQ", 0, 1) + _s("tokenizer.ggml.scores")
                                          + struct.pack("<IIQ", ARR, 0, 10**12) + b"\0" * 900), "length of"),
    "gguf-array-1e9-strings": _gguf_case(_raw(_HDR + struct.pack("<QQ", 0, 1) + _s("tokenizer.ggml.tokens")
                                              + struct.pack("<IIQ", ARR, STR, 10**9) + b"\0" * 900), "length of"),
    "gguf-array-nested": _gguf_case(_raw(_HDR + struct.pack("<QQ", 0, 1) + _s("x") + struct.pack("<IIQ", ARR, ARR, 1)
                                         + struct.pack("<IQ", ARR, 1) + struct.pack("<IQ", ARR, 1) + b"\0" * 64), "nests"),
    "gguf-value-type-13": _gguf_case(_raw(_HDR + struct.pack("<QQ", 0, 1) + _s("x") + struct.pack("<I", 13) + b"\0" * 16),
                                     "value type 13"),
    "gguf-cut-in-header": _gguf_case(lambda: gguf_bytes(*model_spec())[:200], "malformed"),
    "gguf-cut-in-data": _gguf_case(lambda: gguf_bytes(*model_spec())[:-100], "truncated"),
    "gguf-offset-past-end": _gguf_case(_mutated(lambda kv, t: None, offsets={"output_norm.weight": 1 << 40}), "truncated"),
    "gguf-tensor-0-dims": _gguf_case(_mutated(_tensor("output_norm.weight", [])), "0 dimensions"),
    "gguf-tensor-5-dims": _gguf_case(_mutated(_tensor("output_norm.weight", [1, 1, 1, 1, HIDDEN])), "5 dimensions"),
    "gguf-tensor-dim-0": _gguf_case(_mutated(_tensor("output_norm.weight", [0])), "dimensions"),
    "gguf-tensor-dims-2e40": _gguf_case(_mutated(_tensor("output_norm.weight", [1 << 40, 1 << 40])), "more than the file"),
    "gguf-ggml-type-99": _gguf_case(_mutated(lambda kv, t: None, ggml_type=99), "ggml type 99"),
    "gguf-tensor-name-traversal": _gguf_case(_mutated(_tensor("../../../../tmp/parity-pwned", [4])), "not a plain dotted name"),
    "gguf-tensor-name-absolute": _gguf_case(_mutated(_tensor("/etc/passwd", [4])), "not a plain dotted name"),
    "gguf-tensor-name-empty": _gguf_case(_mutated(_tensor("", [4])), "not a plain dotted name"),
    "gguf-tensor-name-space": _gguf_case(_mutated(_tensor("blk.0.attn q.weight", [4])), "not a plain dotted name"),
    "gguf-tensor-name-double-dot": _gguf_case(_mutated(_tensor("blk..0.weight", [4])), "not a plain dotted name"),
    "gguf-tensor-name-twice": _gguf_case(_raw(_HDR + struct.pack("<QQ", 2, 0)
                                              + (_s("a") + struct.pack("<IQIQ", 1, 4, 0, 0)) * 2 + b"\0" * 64),
                                         "appears twice"),
    "gguf-alignment-3": _gguf_case(_mutated(_meta("general.alignment", U32, 3)), "alignment"),
    "gguf-alignment-0": _gguf_case(_mutated(_meta("general.alignment", U32, 0)), "alignment"),
    "gguf-no-tensors": _gguf_case(_mutated(lambda kv, t: t.clear()), "no tensors"),
    "gguf-block-count-3-of-2": _gguf_case(_mutated(_meta("llama.block_count", U32, 3)), "blk.2", "missing"),
    "gguf-block-count-1e9": _gguf_case(_mutated(_meta("llama.block_count", U32, 10**9)), "block_count"),
    "gguf-block-count-0": _gguf_case(_mutated(_meta("llama.block_count", U32, 0)), "block_count"),
    "gguf-block-count-negative": _gguf_case(_mutated(_meta("llama.block_count", I32, -1)), "block_count"),
    "gguf-block-count-string": _gguf_case(_mutated(_meta("llama.block_count", STR, "2")), "block_count"),
    "gguf-block-count-float": _gguf_case(_mutated(_meta("llama.block_count", F32, 2.0)), "block_count"),
    "gguf-block-count-missing": _gguf_case(_mutated(_drop("llama.block_count")), "block_count"),
    "gguf-block-count-1-of-2": _gguf_case(_mutated(_meta("llama.block_count", U32, 1)), "beyond"),
    "gguf-missing-ffn-down": _gguf_case(_mutated(_drop("blk.1.ffn_down.weight")), "blk.1.ffn_down.weight", "missing"),
    "gguf-missing-attn-q": _gguf_case(_mutated(_drop("blk.0.attn_q.weight")), "blk.0.attn_q.weight"),
    "gguf-missing-embedding": _gguf_case(_mutated(_drop("token_embd.weight")), "token_embd.weight"),
    "gguf-missing-output-norm": _gguf_case(_mutated(_drop("output_norm.weight")), "output_norm.weight"),
    "gguf-head-count-0": _gguf_case(_mutated(_meta("llama.attention.head_count", U32, 0)), "head_count"),
    "gguf-head-count-5": _gguf_case(_mutated(_meta("llama.attention.head_count", U32, 5)), "does not divide"),
    "gguf-head-count-kv-3": _gguf_case(_mutated(_meta("llama.attention.head_count_kv", U32, 3)), "does not divide"),
    "gguf-head-count-kv-0": _gguf_case(_mutated(_meta("llama.attention.head_count_kv", U32, 0)), "head_count_kv"),
    "gguf-embedding-length-0": _gguf_case(_mutated(_meta("llama.embedding_length", U32, 0)), "embedding_length"),
    "gguf-embedding-length-64": _gguf_case(_mutated(_meta("llama.embedding_length", U32, 64)), "embedding_length"),
    "gguf-ffn-length-0": _gguf_case(_mutated(_meta("llama.feed_forward_length", U32, 0)), "feed_forward_length"),
    "gguf-ffn-length-wrong": _gguf_case(_mutated(_meta("llama.feed_forward_length", U32, 48)), "blk.0.ffn_gate.weight"),
    "gguf-attn-k-wrong-shape": _gguf_case(_mutated(_tensor("blk.1.attn_k.weight", [HIDDEN, HIDDEN])), "attn_k"),
    "gguf-output-wrong-shape": _gguf_case(_mutated(_tensor("output.weight", [HIDDEN + 1, VOCAB])), "output.weight"),
    "gguf-embedding-1d": _gguf_case(_mutated(_tensor("token_embd.weight", [HIDDEN * VOCAB])), "token_embd.weight"),
    "gguf-arch-unknown": _gguf_case(_mutated(_meta("general.architecture", STR, "gpt9")), "gpt9"),
    "gguf-wrong-family": _gguf_case(_mutated(lambda kv, t: kv.__setitem__("general.architecture", (STR, "qwen2"))),
                                    "qwen2"),
    "gguf-probes-command": (lambda k: ["probes", "--checkpoint", str(k.file("m.gguf", gguf_bytes({}, {}, counts=(10**9, 0))))],
                            ("tensor count",)),
}


# -- outputs: full disks, read-only places, paths that are not what a writer needs, locks --------------

def _full(make: Callable[[Kit], list[str]]) -> Callable[[Kit], list[str]]:
    def build(k: Kit) -> list[str]:
        argv = make(k)
        k.full_disk()
        return argv
    return build


def _locked(make: Callable[[Kit], list[str]]) -> Callable[[Kit], list[str]]:
    """The case's --out held by another parity run (its lock file taken)."""
    def build(k: Kit) -> list[str]:
        import fcntl

        fd = os.open(k.tmp / f".{k.out.name}.parity-lock", os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        k.held = fd  # type: ignore[attr-defined]  # held until the process ends
        return make(k)
    return build


def _eval(*args: str) -> Callable[[Kit], list[str]]:
    def build(k: Kit) -> list[str]:
        data = k.file("d.jsonl", '{"prompt": "hello world"}\n')
        return ["eval", "-q", "--model", "llama", "--checkpoint", str(k.shared["chat"]), "--dataset", str(data),
                "--max-new-tokens", "2", *[a.replace("OUT", str(k.out)).replace("HTML", str(k.html)) for a in args]]
    return build


def _sweep(*args: str) -> Callable[[Kit], list[str]]:
    return lambda k: ["quant-sweep", "-q", "--model", "llama", "--device", "cpu", "--no-rouge", "--schemes", "int8-wo",
                      "--tokens", "4", *[a.replace("OUT", str(k.out)).replace("HTML", str(k.html)) for a in args]]


def _cmd(*args: str) -> Callable[[Kit], list[str]]:
    """Any command; OUT, HTML, REPORT, GEN, DUMP, TAKEN (a file), RO (a read-only place) filled in."""
    def build(k: Kit) -> list[str]:
        subst = {"OUT": str(k.out), "HTML": str(k.html), "REPORT": str(k.shared["report"]), "GEN": str(k.shared["gen"]),
                 "DUMP": str(k.shared["dump"]), "RO": str(k.shared["readonly"])}
        if any("TAKEN" in a for a in args):
            subst["TAKEN"] = str(k.file("taken", "mine"))
        out = []
        for a in args:
            for key, val in subst.items():
                a = a.replace(key, val)
            out.append(a)
        return out
    return build


ENOSPC = ("No space left on device", "ENOSPC", "Note:")
_EVAL_NEEDS = ENOSPC if HAS["rouge_score"] else ("rouge-score",)
_SWEEP_NEEDS = ENOSPC if HAS["modelopt"] else ("not installed",)
_GGUF_NEEDS = ("cache folder", "ENOSPC") if HAS["gguf"] and HAS["accelerate"] else ("gguf",)


def _gguf_cache_full(k: Kit) -> list[str]:
    (k.tmp / "cache" / "gguf").mkdir(parents=True)  # the cache's own folders may stay; a model folder may not
    k.env("PARITY_CACHE", str(k.tmp / "cache"))
    k.full_disk()
    return ["run", "-q", "--no-files", "--model", "llama", "--checkpoint", str(k.file("m.gguf", gguf_bytes(*model_spec())))]


def _gguf_cache_at(where: Callable[[Kit], str]) -> Callable[[Kit], list[str]]:
    def build(k: Kit) -> list[str]:
        k.env("PARITY_CACHE", where(k))
        return ["run", "-q", "--no-files", "--model", "llama", "--checkpoint", str(k.file("m.gguf", gguf_bytes(*model_spec())))]
    return build


_CACHE_NEEDS = ("cache folder", "PARITY_CACHE") if HAS["gguf"] and HAS["accelerate"] else ("gguf",)
def _onnx_cache_at(where: Callable[[Kit], str]) -> Callable[[Kit], list[str]]:
    def build(k: Kit) -> list[str]:
        k.env("PARITY_CACHE", where(k))
        return ["run", "-q", "--no-files", "--tokens", "4", "--no-isolate", "--candidate", "onnxruntime"]
    return build


_ONNX_NEEDS = ("cache folder", "PARITY_CACHE") if HAS["onnx"] and HAS["onnxruntime"] else ("not installed",)
OUTPUT_CASES: dict[str, Case] = {
    "cache-is-a-file-onnx": (_onnx_cache_at(lambda k: str(k.file("cachefile", "x"))), _ONNX_NEEDS),
    "cache-read-only-onnx": (_onnx_cache_at(lambda k: str(k.shared["readonly"] / "cache")), _ONNX_NEEDS),
    "full-run-out": (_full(_cmd("run", "-q", "--tokens", "4", "--no-isolate", "--out", "OUT")), ("--out", *ENOSPC)),
    "full-run-keep-tensors": (_full(_cmd("run", "-q", "--tokens", "4", "--no-isolate", "--keep-tensors", "--out", "OUT")),
                              ("--out", *ENOSPC)),
    "full-run-html": (_full(_cmd("run", "-q", "--tokens", "4", "--no-isolate", "--no-files", "--html", "HTML")),
                      ("--html", *ENOSPC)),
    "full-bisect-out": (_full(_cmd("bisect", "-q", "--tokens", "4", "--out", "OUT")), ("--out", *ENOSPC)),
    "full-generate-out": (_full(_cmd("generate", "-q", "--tokens", "4", "--max-new-tokens", "2", "--out", "OUT")),
                          ("--out", *ENOSPC)),
    "full-dump-out": (_full(_cmd("dump", "-q", "--tokens", "4", "--out", "OUT")), ("--out", *ENOSPC)),
    "full-compare-out": (_full(_cmd("compare", "DUMP", "DUMP", "--out", "OUT")), ("--out", *ENOSPC)),
    "full-report-output": (_full(_cmd("report", "REPORT", "-o", "HTML")), ("--output", *ENOSPC)),
    "full-diff-html": (_full(_cmd("diff", "REPORT", "REPORT", "--html", "HTML")), ("--html", *ENOSPC)),
    "full-eval-out": (_full(_eval("--out", "OUT")), _EVAL_NEEDS),
    "full-eval-html": (_full(_eval("--no-files", "--html", "HTML")), _EVAL_NEEDS),
    "full-quant-sweep-out": (_full(_sweep("--out", "OUT")), _SWEEP_NEEDS),
    "full-gguf-cache": (_gguf_cache_full, _GGUF_NEEDS),
    "cache-is-a-file": (_gguf_cache_at(lambda k: str(k.file("cachefile", "x"))), _CACHE_NEEDS),
    "cache-read-only": (_gguf_cache_at(lambda k: str(k.shared["readonly"] / "cache")), _CACHE_NEEDS),
    "eval-out-is-a-file": (lambda k: _eval("--out", str(k.file("taken", "mine")))(k), ("is a file",)),
    "eval-out-dev-null": (_eval("--out", "/dev/null"), ("not a folder",)),
    "eval-out-read-only": (lambda k: _eval("--out", str(k.shared["readonly"] / "e"))(k), ("cannot write",)),
    "eval-html-is-a-folder": (lambda k: _eval("--no-files", "--html", str(k.tmp))(k), ("is a folder",)),
    "eval-html-dev-null": (_eval("--no-files", "--html", "/dev/null"), ("not a regular file",)),
    "quant-sweep-out-is-a-file": (lambda k: _sweep("--out", str(k.file("taken", "mine")))(k), ("is a file",)),
    "quant-sweep-out-read-only": (lambda k: _sweep("--out", str(k.shared["readonly"] / "s"))(k), ("cannot write",)),
    "quant-sweep-html-is-a-folder": (lambda k: _sweep("--no-files", "--html", str(k.tmp))(k), ("is a folder",)),
    "generate-html-is-a-folder": (_cmd("generate", "-q", "--tokens", "4", "--no-files", "--html", "/tmp"), ("is a folder",)),
    "generate-out-read-only": (_cmd("generate", "-q", "--tokens", "4", "--out", "RO/g"), ("cannot write",)),
    "compare-out-read-only": (_cmd("compare", "DUMP", "DUMP", "--out", "RO/c"), ("cannot write",)),
    "compare-out-dev-null": (_cmd("compare", "DUMP", "DUMP", "--out", "/dev/null"), ("not a folder",)),
    "dump-out-dev-null": (_cmd("dump", "-q", "--out", "/dev/null"), ("not a folder",)),
    "bisect-out-is-a-file": (_cmd("bisect", "-q", "--out", "TAKEN"), ("is a file",)),
    "run-out-under-a-file": (_cmd("run", "-q", "--out", "TAKEN/run"), ("not a folder",)),
    "run-html-under-a-file": (_cmd("run", "-q", "--no-files", "--html", "TAKEN/p.html"), ("not a folder",)),
    "run-out-and-html-same": (_cmd("run", "-q", "--out", "OUT", "--html", "OUT"), ("same path",)),
    "locked-run": (_locked(_cmd("run", "-q", "--tokens", "4", "--out", "OUT")), ("in use",)),
    "locked-bisect": (_locked(_cmd("bisect", "-q", "--tokens", "4", "--out", "OUT")), ("in use",)),
    "locked-generate": (_locked(_cmd("generate", "-q", "--tokens", "4", "--out", "OUT")), ("in use",)),
    "locked-dump": (_locked(_cmd("dump", "-q", "--tokens", "4", "--out", "OUT")), ("in use",)),
    "locked-compare": (_locked(_cmd("compare", "DUMP", "DUMP", "--out", "OUT")), ("in use",)),
    "locked-eval": (_locked(_eval("--out", "OUT")), ("in use",)),
    "locked-quant-sweep": (_locked(_sweep("--out", "OUT")), ("in use",)),
}


# -- eval sets -----------------------------------------------------------------------------------------

def _dataset(content: str | bytes, *args: str, checkpoint: str = "chat") -> Callable[[Kit], list[str]]:
    def build(k: Kit) -> list[str]:
        ck = ["--checkpoint", str(k.shared[checkpoint])] if checkpoint else []
        return ["eval", "-q", "--out", str(k.out), "--model", "llama", *ck, "--dataset", str(k.file("d.jsonl", content)),
                "--max-new-tokens", "2", *args]
    return build


_OK = '{"prompt": "hello world"}\n'
EVAL_CASES: dict[str, Case] = {
    "eval-line-nested-100k": (_dataset('{"prompt": ' + DEEP + "}\n"), ("line 1", "nests")),
    "eval-line-nested-100-objects": (_dataset('{"prompt": "a", "x": ' + '{"a": ' * 100 + "1" + "}" * 100 + "}\n"),
                                     ("line 1", "nests")),
    "eval-prompt-2MB": (_dataset(json.dumps({"prompt": "hello " * 350_000}) + "\n"), ("line 1", "characters")),
    "eval-prompt-300K": (_dataset(json.dumps({"prompt": "a" * 300_000}) + "\n"), ("line 1", "characters")),
    "eval-line-is-a-list": (_dataset('[1, 2]\n'), ("line 1", "list")),
    "eval-line-is-a-number": (_dataset(_OK + '5\n'), ("line 2", "int")),
    "eval-line-is-null": (_dataset(_OK + 'null\n'), ("line 2", "NoneType")),
    "eval-line-not-json": (_dataset(_OK + _OK + '{"prompt": \n'), ("line 3", "not valid JSON")),
    "eval-line-nan": (_dataset('{"prompt": NaN}\n'), ("line 1", "'prompt'")),
    "eval-prompt-int": (_dataset('{"prompt": 5}\n'), ("line 1", "'prompt'")),
    "eval-prompt-empty": (_dataset('{"prompt": ""}\n'), ("line 1", "'prompt'")),
    "eval-prompt-blank": (_dataset('{"prompt": "   "}\n'), ("line 1", "'prompt'")),
    "eval-prompt-list": (_dataset('{"prompt": ["a"]}\n'), ("line 1", "'prompt'")),
    "eval-article-dict": (_dataset('{"article": {"a": 1}}\n'), ("line 1", "'article'")),
    "eval-no-prompt-key": (_dataset('{"text": "hi"}\n'), ("line 1", "'prompt'")),
    "eval-highlights-int": (_dataset('{"article": "a", "highlights": 3}\n'), ("line 1", "highlights")),
    "eval-target-list": (_dataset('{"prompt": "a", "target": ["x"]}\n'), ("line 1", "target")),
    "eval-target-and-highlights": (_dataset('{"prompt": "a", "target": "x", "highlights": "y"}\n'), ("line 1", "both")),
    "eval-not-utf8": (_dataset(b'{"prompt": "caf\xe9"}\n'), ("UTF-8",)),
    "eval-lone-surrogate": (_dataset('{"prompt": "a\\ud800b"}\n'), ("line 1", "surrogate")),
    "eval-empty-file": (_dataset(""), ("no prompts",)),
    "eval-blank-lines": (_dataset("\n\n   \n"), ("no prompts",)),
    "eval-dataset-folder": (lambda k: ["eval", "-q", "--out", str(k.out), "--model", "llama", "--dataset", str(k.tmp)],
                            ("--dataset",)),
    "eval-limit-0": (_dataset(_OK, "--limit", "0"), ("--limit",)),
    "eval-max-new-0": (_dataset(_OK, "--max-new-tokens", "0"), ("--max-new-tokens",)),
    "eval-max-new-negative": (_dataset(_OK, "--max-new-tokens", "-5"), ("--max-new-tokens",)),
    "eval-max-new-100000": (_dataset(_OK, "--max-new-tokens", "100000"), ("--max-new-tokens",)),
    "eval-max-new-beyond-context": (_dataset(_OK, "--max-new-tokens", "60000"),
                                    ("--max-new-tokens", "context") if HAS["rouge_score"] else ("rouge-score",)),
    "eval-min-rougel-101": (_dataset(_OK, "--min-rougel", "101"), ("--min-rougel",)),
    "eval-no-tokenizer": (_dataset(_OK, checkpoint=""), ("tokenizer",) if HAS["rouge_score"] else ("rouge-score",)),
    "eval-candidate-unknown": (_dataset(_OK, "--candidate", "nope"), ("unknown candidate",)),
}


# -- chat templates ------------------------------------------------------------------------------------

def _template(template: Any, seconds: float | None = None) -> Callable[[Kit], list[str]]:
    def build(k: Kit) -> list[str]:
        ck = k.tmp / "ck"
        shutil.copytree(k.shared["chat"], ck, symlinks=True)
        cfg = json.loads((ck / "tokenizer_config.json").read_text())
        (ck / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": template}))
        if seconds is not None:
            k.setups.append(lambda mp: mp.setattr("parity.loading.chat.TEMPLATE_SECONDS", seconds))
        return ["run", "-q", "--out", str(k.out), "--model", "llama", "--checkpoint", str(ck), "--chat", "--prompt", "hello"]
    return build


TEMPLATE_CASES: dict[str, Case] = {
    "chat-template-raises": (_template("{{ raise_exception('no system role here') }}"), ("chat template", "no system role")),
    "chat-template-syntax": (_template("{% for m in messages %}{{ m.content }"), ("chat template", "TemplateSyntaxError")),
    "chat-template-unclosed-block": (_template("{% if add_generation_prompt %}x"), ("chat template",)),
    "chat-template-escape-subclasses": (_template("{{ ''.__class__.__mro__[1].__subclasses__() }}"),
                                        ("chat template", "SecurityError")),
    "chat-template-escape-globals": (_template("{{ raise_exception.__globals__['os'].system('true') }}"),
                                     ("chat template",)),
    "chat-template-escape-format": (_template("{{ '{0.__class__.__init__.__globals__}'.format(messages) }}"),
                                    ("chat template",)),
    "chat-template-loop": (_template("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                                     seconds=0.5), ("chat template", "did not finish")),
    "chat-template-range-huge": (_template("{% for i in range(10**12) %}x{% endfor %}"), ("chat template",)),
    "chat-template-recursion": (_template("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"), ("chat template",)),
    "chat-template-undefined-call": (_template("{{ nothing_here() }}"), ("chat template",)),
    "chat-template-renders-nothing": (_template("{{ '' }}"), ("chat template", "no tokens")),
    "chat-template-renders-spaces": (_template("{% for m in messages %}   {% endfor %}"), ("chat template", "no tokens")),
}


# -- reports ---------------------------------------------------------------------------------------------

REPORT_CASES: dict[str, Case] = {
    "report-schema-99": (_report(_set("schema_version", "99.0")), ("schema_version 99.0",)),
    "report-schema-2": (_report(_set("schema_version", "2.1")), ("schema_version 2.1",)),
    "report-schema-empty": (_report(_set("schema_version", "")), ("schema_version",)),
    "report-schema-abc": (_report(_set("schema_version", "abc")), ("schema_version 'abc'",)),
    "report-schema-int": (_report(_set("schema_version", 1)), ("schema_version",)),
    "report-schema-list": (_report(_set("schema_version", [1, 2])), ("schema_version",)),
    "report-largest-excess-no-excess": (_report(_set("summary.largest_excess", {"probe": "logits"})), ("largest_excess",)),
    "report-largest-excess-list": (_report(_set("summary.largest_excess", [1])), ("largest_excess",)),
    "report-largest-error-no-probe": (_report(_set("summary.largest_error", {"nrmse": 1.0})), ("largest_error",)),
    "report-first-divergence-string": (_report(_set("summary.first_divergence", "blocks.0")), ("first_divergence",)),
    "report-first-divergence-block-string": (_report(_set("summary.first_divergence", {"probe": "x", "block": "one"})),
                                             ("first_divergence",)),
    "diff-schema-99": (_report(_set("schema_version", "99.0"), "diff"), ("schema_version 99.0",)),
    "diff-run-vs-generate": (_cmd("diff", "REPORT", "GEN"), ("generate",)),
    "diff-generate-vs-run": (_cmd("diff", "GEN", "REPORT"), ("generate",)),
    "diff-html-read-only-schema": (_report(_set("schema_version", "abc"), "diff"), ("schema_version",)),
}


# -- options that do nothing alone -----------------------------------------------------------------------

def _with_file(*args: str) -> Callable[[Kit], list[str]]:
    return lambda k: ["run", "-q", "--out", str(k.out), *[a.replace("FILE", str(k.file("f.bin", "x"))) for a in args]]


OPTION_CASES: dict[str, Case] = {
    "run-gguf-without-llamacpp": (_with_file("--gguf", "FILE"), ("--gguf needs --candidate llamacpp",)),
    "run-gguf-with-port": (_with_file("--candidate", "port", "--gguf", "FILE"), ("--gguf needs --candidate llamacpp",)),
    "run-gguf-type-without-llamacpp": (_cmd("run", "-q", "--out", "OUT", "--gguf-type", "q8_0"), ("--gguf-type",)),
    "run-sensitivity-without-quant": (_cmd("run", "-q", "--out", "OUT", "--sensitivity"), ("--sensitivity", "quant")),
    "run-dump-map-without-dump": (_with_file("--dump-map", "FILE"), ("--dump-map needs --candidate dump",)),
    "run-dump-without-dump": (_cmd("run", "-q", "--out", "OUT", "--dump", "DUMP"), ("--dump needs --candidate dump",)),
    "run-trtllm-map-without-trtllm": (_cmd("run", "-q", "--out", "OUT", "--trtllm-map", "x"), ("--trtllm-map",)),
    "generate-gguf-without-llamacpp": (lambda k: ["generate", "-q", "--out", str(k.out), "--gguf", str(k.file("m.gguf", "x"))],
                                       ("--gguf",)),
    "dump-gguf-without-llamacpp": (lambda k: ["dump", "-q", "--out", str(k.out), "--gguf", str(k.file("m.gguf", "x"))],
                                   ("--gguf",)),
    "quant-sweep-schemes-empty": (_sweep("--out", "OUT", "--schemes", ""), ("--schemes",)),
    "quant-sweep-schemes-commas": (_sweep("--out", "OUT", "--schemes", ",,"), ("--schemes",)),
    "quant-sweep-max-new-0": (lambda k: ["quant-sweep", "-q", "--out", str(k.out), "--model", "llama", "--max-new-tokens", "0"],
                              ("--max-new-tokens",)),
    "quant-sweep-max-new-1e9": (lambda k: ["quant-sweep", "-q", "--out", str(k.out), "--model", "llama",
                                           "--max-new-tokens", "1000000000"], ("--max-new-tokens",)),
    "quant-sweep-dataset-missing": (lambda k: ["quant-sweep", "-q", "--out", str(k.out), "--model", "llama", "--dataset",
                                               str(k.tmp / "none.jsonl")], ("--dataset",)),
    "quant-sweep-dataset-no-rouge": (lambda k: ["quant-sweep", "-q", "--out", str(k.out), "--model", "llama", "--no-rouge",
                                                "--dataset", str(k.file("d.jsonl", _OK))], ("--no-rouge",)),
    "quant-sweep-limit-0": (lambda k: ["quant-sweep", "-q", "--out", str(k.out), "--model", "llama", "--limit", "0"],
                            ("--limit",)),
    "quant-sweep-dataset-bad-line": (lambda k: ["quant-sweep", "-q", "--out", str(k.out), "--model", "llama", "--dataset",
                                                str(k.file("d.jsonl", _OK + "[1]\n"))], ("line 2",)),
    "run-system-without-chat": (_cmd("run", "-q", "--out", "OUT", "--system", "be brief"), ("--system", "--chat")),
    "generate-system-without-chat": (_cmd("generate", "-q", "--out", "OUT", "--system", "be brief"), ("--system",)),
    "eval-system-with-raw": (_dataset(_OK, "--raw", "--system", "be brief"), ("--system", "--raw")),
    "run-ort-provider-without-onnxruntime": (_cmd("run", "-q", "--out", "OUT", "--ort-provider", "CUDAExecutionProvider"),
                                             ("--ort-provider", "onnxruntime")),
    "run-ort-opt-without-onnxruntime": (_cmd("run", "-q", "--out", "OUT", "--ort-opt", "basic"), ("--ort-opt",)),
    "dump-ort-opt-without-onnxruntime": (_cmd("dump", "-q", "--out", "OUT", "--ort-opt", "basic"), ("--ort-opt",)),
    "quant-sweep-schemes-twice": (_sweep("--out", "OUT", "--schemes", "int8-wo,int4-wo,int8-wo"), ("int8-wo", "more than once")),
    "tokenizer-far-smaller": (lambda k: ["run", "-q", "--out", str(k.out), "--model", "llama", "--prompt", "hello world",
                                         "--tokenizer", str(k.shared["chat"])], ("vocabulary", "12 tokens")),
}


# -- token-id files and pickled weights --------------------------------------------------------------------

def _npy_raw(header: str, data: bytes = b"", version: bytes = b"\x01\x00") -> bytes:
    h = header.encode("latin1")
    h += b" " * (-(10 + len(h) + 1) % 64) + b"\n"
    return b"\x93NUMPY" + version + struct.pack("<H", len(h)) + h + data


def _ids_file(content: bytes | Any) -> Callable[[Kit], list[str]]:
    def build(k: Kit) -> list[str]:
        p = k.file("ids.npy", content) if isinstance(content, bytes) else k.npy("ids.npy", content)
        return ["run", "-q", "--out", str(k.out), "--input-ids", str(p)]
    return build


class _Evil:
    def __reduce__(self) -> Any:
        return (os.system, ("echo parity-was-here",))


def _weights(kind: str) -> Callable[[Kit], list[str]]:
    def build(k: Kit) -> list[str]:
        ck = k.checkpoint({}, weights=False)
        path = ck / "pytorch_model.bin"
        if kind == "pickle":
            path.write_bytes(pickle.dumps({"model.embed_tokens.weight": _Evil()}))
        elif kind == "torch-zip":
            import torch

            torch.save({"model.embed_tokens.weight": _Evil()}, str(path))
        elif kind == "truncated":
            import torch

            torch.save({"a": torch.ones(1000)}, str(path))
            path.write_bytes(path.read_bytes()[:300])
        elif kind == "list":
            import torch

            torch.save([torch.ones(2)], str(path))
        elif kind == "not-tensors":
            import torch

            torch.save({"a": 5}, str(path))
        else:
            path.write_bytes(b"")
        return ["run", "-q", "--out", str(k.out), "--model", "llama", "--checkpoint", str(ck)]
    return build


FILE_CASES: dict[str, Case] = {
    "ids-npy-timedelta": (_ids_file(np.array([1, 2], dtype="timedelta64[s]")), ("timedelta64",)),
    "ids-npy-datetime": (_ids_file(np.array(["2020-01-01"], dtype="datetime64[D]")), ("datetime64",)),
    "ids-npy-float16": (_ids_file(np.array([1, 2], dtype=np.float16)), ("float16",)),
    "ids-npy-structured": (_ids_file(np.zeros(2, dtype=[("a", "i4")])), ("not integer token ids",)),
    "ids-npy-unclosed-header": (_ids_file(_npy_raw("{'descr': '<i8', 'fortran_order': False, 'shape': (2,), ")),
                                ("not a readable .npy",)),
    "ids-npy-huge-shape": (_ids_file(_npy_raw("{'descr': '<i8', 'fortran_order': False, 'shape': (10000000000,), }")),
                           ("claims shape",)),
    "ids-npy-short-data": (_ids_file(_npy_raw("{'descr': '<i8', 'fortran_order': False, 'shape': (4,), }", b"\0" * 8)),
                           ("claims shape",)),
    "ids-npy-version-9": (_ids_file(_npy_raw("{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }", b"\0" * 8,
                                             b"\x09\x00")), ("not a readable .npy",)),
    "ids-npy-header-code": (_ids_file(_npy_raw("__import__('os').system('true')")), ("not a readable .npy",)),
    "ids-npy-empty-file": (_ids_file(b""), ("not a readable .npy",)),
    "ids-npy-2d": (_ids_file(np.ones((2, 3), dtype=np.int64)), ("shape",)),
    "ids-npy-0d": (_ids_file(np.array(5, dtype=np.int64)), ("shape",)),
    "weights-bin-pickle": (_weights("pickle"), ("pytorch_model.bin", "pickle")),
    "weights-bin-torch-evil": (_weights("torch-zip"), ("pytorch_model.bin", "posix.system")),
    "weights-bin-truncated": (_weights("truncated"), ("pytorch_model.bin",)),
    "weights-bin-list": (_weights("list"), ("state dict",)),
    "weights-bin-not-tensors": (_weights("not-tensors"), ("not a tensor",)),
    "weights-bin-empty": (_weights("empty"), ("pytorch_model.bin",)),
}

#: cases that run a whole command before the disk fills (seconds each): in ``make test-all`` only
SLOW = {"full-quant-sweep-out", "full-bisect-out", "full-run-keep-tensors", "full-generate-out", "full-run-html",
        "full-run-out", "full-dump-out", "cache-is-a-file-onnx", "cache-read-only-onnx",
        "eval-max-new-beyond-context"}

MORE: dict[str, Case] = {**GGUF_CASES, **OUTPUT_CASES, **EVAL_CASES, **TEMPLATE_CASES, **REPORT_CASES, **OPTION_CASES,
                         **FILE_CASES}

"""The ``llamacpp`` candidate: a GGUF file run by llama.cpp (through llama-cpp-python), its
probes taken from the computation graph by the eval callback (parity.engines.llamacpp.graph).

Which GGUF file runs (``resolve``, before the reference is built):

1. ``--gguf FILE``;
2. the ``--checkpoint FILE.gguf`` the reference was dequantized from;
3. a fetched model's own GGUF (``--model smollm2``: the pinned Q4_1 file);
4. otherwise the reference's weights converted by llama.cpp's own ``convert_hf_to_gguf.py``
   (parity.loading.convert_gguf) to ``--gguf-type`` (default: ``--dtype`` as f32/f16/bf16).
   ``--gguf-type q8_0`` makes the reference read the same file dequantized (``--checkpoint``
   set to it), so both sides hold the same weights.

(2 and 3 take ``--gguf-type`` as a request to convert instead.) The verdict's dtype follows
the file: F32 -> float32, F16 -> float16, BF16 -> bfloat16; a quantized file's twin is the
reference with llama.cpp's activation quantization emulated (parity.engines.llamacpp.actquant; the
float16 floor), see docs/guide/engines/llamacpp.md. ``--fault
gguf-...`` alters a copy of the file (parity.faults.gguf).

The KV cache holds float32 for an F32 file (llama.cpp's default F16 cache would add half
precision rounding to every attention of a float32 model) and llama.cpp's default (F16)
otherwise; flash attention is off. The whole prompt is one micro-batch (so each node holds
every token) and logits are asked for every position.
"""
from __future__ import annotations

import ctypes
import dataclasses
import os
import shutil
import tempfile
import weakref
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from parity import dtypes
from parity.engines.contract import EngineContext
from parity.engines.base import Backend, Sink
from parity.loading.dumps import canonical_shape
from parity.engines.llamacpp.graph import Collector, Ggml, GraphMap, load_graph_map
from parity.capture import probes as canon
from parity.errors import BackendError, UsageError
from parity.options import RunOptions
from parity.loading import convert_gguf as conv

GGML_TYPE_F32 = 0
_LOG: deque[str] = deque(maxlen=40)
_log_cb: Any = None


def _quiet_llama() -> None:
    """llama.cpp logs to stderr; keep its last lines for error messages instead."""
    global _log_cb
    import llama_cpp

    if _log_cb is None:
        def keep(level: int, text: bytes, user: Any) -> None:
            _LOG.append((text or b"").decode("utf-8", "replace").rstrip())

        _log_cb = llama_cpp.llama_log_callback(keep)
        llama_cpp.llama_log_set(_log_cb, ctypes.c_void_p(0))


def _last_log() -> str:
    lines = [ln for ln in _LOG if ln]
    errs = [ln for ln in lines if "error" in ln.lower() or "failed" in ln.lower()]
    return (errs or lines or ["no log"])[-1][:300]


# -- which file ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Resolved:
    path: Path
    origin: str
    file_type: str
    dtype: str  # the twin's dtype
    quantized: bool
    #: the reference's checkpoint when it must read this very file (a converted quantized file,
    #: dequantized), else None
    reference: str | None = None


class Chosen(str):
    """The path of the GGUF file :func:`prepare` chose, as ``RunOptions.gguf``, carrying how it
    was found: later stages of the same run get that :class:`Resolved` back from their options
    (a file found as a pinned or converted one keeps that origin), and nothing is shared with
    other runs in the process (a cache keyed by path labelled one run's file with another's origin)."""

    resolved: Resolved

    def __new__(cls, res: Resolved) -> Chosen:
        self = super().__new__(cls, str(res.path))
        self.resolved = res
        return self

    def __reduce__(self) -> tuple[Any, ...]:  # a pickled copy (a --tp rank's options) keeps it
        return (Chosen, (self.resolved,))


def resolve(opts: RunOptions, say: Any = None) -> Resolved:
    """The clean GGUF file this run's llama.cpp runs: the one prepare() chose, else found now."""
    chosen = getattr(opts.gguf, "resolved", None)  # a Chosen (of whichever copy of this module made it)
    return chosen if chosen is not None else _locate(opts, say)


def derived_options(opts: RunOptions, res: Resolved) -> RunOptions:
    """The run options with what the file decides: the file itself, the verdict's dtype, the
    twin of a quantized file (the reference with llama.cpp's activation quantization), and the
    reference's checkpoint for a converted quantized file."""
    changes: dict[str, Any] = {"gguf": Chosen(res), "dtype": res.dtype}
    if res.quantized and opts.quant_twin in (None, "auto", "emulate"):
        changes["twin_gguf"] = str(res.path)
    if res.reference is not None:
        changes["checkpoint"] = res.reference
    return dataclasses.replace(opts, **changes)


def _locate(opts: RunOptions, say: Any) -> Resolved:
    from parity.loading.gguf import is_gguf

    reference = None
    outtype = getattr(opts, "gguf_type", None)
    if opts.gguf:
        path, origin = Path(opts.gguf), "--gguf"
        if not path.is_file():
            raise UsageError(f"--gguf {path}: no such file.")
    elif outtype is None and opts.checkpoint and is_gguf(opts.checkpoint):
        path, origin = Path(opts.checkpoint), "the --checkpoint GGUF file"
    elif outtype is None and _fetched_name(opts):
        name = _fetched_name(opts)
        path, origin = conv.pinned_gguf(name, say), f"the pinned GGUF of `parity fetch {name}`"
    else:
        found = dtypes.find(opts.dtype)
        outtype = outtype or (found.gguf if found is not None else None)
        if outtype not in conv.OUTTYPES:
            raise UsageError(f"--gguf-type {outtype}: not a type llama.cpp's converter writes.", note="valid: " + ", ".join(conv.OUTTYPES))
        from parity import faults

        model_faults = [f for f in faults.parse(opts.faults, 10**6) if f.fault.target == "model"]
        if model_faults:  # they alter the reference's weights after loading, not the converted file
            raise UsageError(f"fault '{model_faults[0].fault.name}' alters the reference's weights, not a GGUF converted from them.",
                             note="convert the faulty weights yourself and pass --gguf FILE")
        path = convert_reference(opts, outtype, say)
        origin = f"the reference's weights converted to {outtype.upper()} by llama.cpp's convert_hf_to_gguf.py"
        if outtype == "q8_0":  # the reference: the same quantized weights, dequantized
            reference = str(path)
    ftype, dtype = conv.file_type(path)
    return Resolved(path.resolve(), origin, ftype, dtype or "fp16", dtype is None, reference)


def _fetched_name(opts: Any) -> str | None:
    if opts.checkpoint or opts.shape or not opts.model:
        return None
    from parity.loading import families

    return families.get(opts.model, opts.family_dirs).preset().fetched


def convert_reference(opts: Any, outtype: str, say: Any) -> Path:
    """The reference's weights as GGUF ``outtype``: a checkpoint folder as it is, a preset's
    seeded weights through a temporary folder (cache key: family, config, seed)."""
    import hashlib
    import json

    from parity.loading.source import ModelSource

    src = ModelSource.resolve(opts.model or "qwen", opts.checkpoint, opts.seed, False, opts.shape,
                              family_dirs=opts.family_dirs)
    if src.checkpoint is not None:
        return conv.convert(src.checkpoint, outtype, src.checkpoint.name, say)
    model = src.build("cpu")
    key = hashlib.sha256(json.dumps([src.family.name, src.config_dict, src.seed, outtype, conv.installed_version(),
                                     conv.FORMAT], sort_keys=True, default=str).encode()).hexdigest()[:16]
    with tempfile.TemporaryDirectory() as tmp:
        conv.save_hf_folder(model, src.config_dict, type(model).__name__, Path(tmp))
        return conv.convert(Path(tmp), outtype, f"preset-{src.family.name}", say, key=key)


def with_faults(path: Path, faults: list[str], num_blocks: int, work: Path) -> tuple[Path, list[str]]:
    """A copy of ``path`` with the GGUF faults among ``faults`` applied (or ``path`` itself)."""
    from parity import faults as registry

    specs = [s for s in registry.parse(faults, num_blocks) if s.fault.target == "gguf"]
    if not specs:
        return path, []
    from parity.faults import gguf as gguf_faults

    copy = work / f"{path.stem}-faulty.gguf"
    shutil.copyfile(path, copy)
    return copy, gguf_faults.apply(specs, copy)


# -- the engine ------------------------------------------------------------------------------------

class LlamaCppBackend(Backend):

    def __init__(self, path: Path, resolved: Resolved, config: Any, num_blocks: int, gmap: GraphMap,
                 faults: list[str], threads: int = 0) -> None:
        super().__init__("llamacpp")
        self.path, self.resolved, self.config, self.num_blocks, self.gmap = path, resolved, config, num_blocks, gmap
        self.faults = faults
        self.threads = threads or max(1, min(4, os.cpu_count() or 1))
        self.model: Any = None
        self.ctx: Any = None
        self.n_ctx = 0
        self.arch = ""
        self.ggml: Ggml | None = None
        self.collector: Collector | None = None
        self._cb: Any = None
        self.gen_facts: dict[str, Any] = {}
        self.ref_chat_template: str | None = None

    # -- lifecycle
    def activate_impl(self) -> None:
        import llama_cpp

        _quiet_llama()
        llama_cpp.llama_backend_init()
        mp = llama_cpp.llama_model_default_params()
        mp.n_gpu_layers = 0
        mp.use_mmap = True
        self.model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), mp)
        if not self.model:
            raise BackendError(f"llama.cpp could not load {self.path}: {_last_log()}")
        self.ggml = Ggml()
        self.arch = self.meta_str("general.architecture") or "?"
        self.gen_facts = generation_facts(self)
        n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        want = getattr(self.config, "vocab_size", None)
        if isinstance(want, int) and n_vocab != want:
            raise BackendError(f"the GGUF file has {n_vocab} tokens, the reference model {want}.", note="is --gguf another model?")

    def deactivate_impl(self) -> None:
        import llama_cpp

        if self.ctx:
            llama_cpp.llama_free(self.ctx)
        if self.model:
            llama_cpp.llama_model_free(self.model)
        self.ctx = self.model = None
        self.n_ctx = 0

    def meta_str(self, key: str) -> str | None:
        import llama_cpp

        buf = ctypes.create_string_buffer(4096)
        n = llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return None if n < 0 else buf.value.decode("utf-8", "replace")

    def context(self, tokens: int) -> Any:
        """A context whose one micro-batch holds ``tokens`` tokens (made again when too small)."""
        import llama_cpp

        if self.ctx and tokens <= self.n_ctx:
            return self.ctx
        if self.ctx:
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        n = max(64, -(-tokens // 64) * 64)
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx = cp.n_batch = cp.n_ubatch = n
        cp.n_seq_max = 1
        cp.n_threads = cp.n_threads_batch = self.threads
        cp.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cp.no_perf = True
        if self.resolved.file_type == "F32":
            cp.type_k = cp.type_v = GGML_TYPE_F32
        self._cb = llama_cpp.ggml_backend_sched_eval_callback(self._eval)
        cp.cb_eval = self._cb
        cp.cb_eval_user_data = None
        self.ctx = llama_cpp.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise BackendError(f"llama.cpp could not make a context of {n} tokens: {_last_log()}")
        self.n_ctx = n
        return self.ctx

    def _eval(self, tensor: int, ask: bool, user: Any) -> bool:
        c = self.collector
        if c is None or c.error is not None:
            return False if ask else True
        try:
            if ask:
                return c.ask(tensor)
            c.take(tensor)
        except BaseException as exc:  # noqa: BLE001 - never raise through C; reported after the decode
            c.error = exc
        return True

    # -- work
    def available_probes_impl(self) -> list[str]:
        return self.gmap.names(self.num_blocks)

    def not_exposed(self) -> dict[str, str]:
        offered = set(self.gmap.names(self.num_blocks))
        out: dict[str, str] = {}
        for p in canon.all_probes(self.num_blocks):
            if p not in offered:
                k = p if canon.parse(p).block is None else f"blocks.{{i}}.{canon.parse(p).point}"
                out.setdefault(k, self.gmap.why_not(p))
        return out

    def decode(self, ids: list[int], start: int, all_logits: bool) -> np.ndarray:
        """Feed ``ids`` at positions ``start``..; logits [n, V] (all) or [1, V] (last)."""
        import llama_cpp

        n = len(ids)
        batch = llama_cpp.llama_batch_init(n, 0, 1)
        try:
            for j, t in enumerate(ids):
                batch.token[j] = int(t)
                batch.pos[j] = start + j
                batch.n_seq_id[j] = 1
                batch.seq_id[j][0] = 0
                batch.logits[j] = 1 if (all_logits or j == n - 1) else 0
            batch.n_tokens = n
            rc = llama_cpp.llama_decode(self.ctx, batch)
        finally:
            llama_cpp.llama_batch_free(batch)
        if rc != 0:
            raise BackendError(f"llama_decode returned {rc}: {_last_log()}")
        rows = n if all_logits else 1
        vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        ptr = llama_cpp.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(n if all_logits else 1, vocab))[:rows].copy()

    def capture_impl(self, input_ids: Any, probes: list[str], sink: Sink) -> Any:
        import llama_cpp

        ids = [int(x) for x in input_ids]
        self.context(len(ids))
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        shapes = {p: canonical_shape(canon.parse(p).point, self.config, len(ids)) for p in probes}
        heads = {p: shapes[p][1] for p in probes if len(shapes[p]) == 3}
        assert self.ggml is not None
        self.collector = Collector(self.ggml, self.gmap, probes, shapes, heads, self.arch in self.gmap.rope_norm, sink)
        try:
            logits = self.decode(ids, 0, True)
            if self.collector.error is not None:
                raise self.collector.error
            self.collector.flush()
        finally:
            self.collector = None
        return torch.from_numpy(logits)

    def stepper(self, position_offset: int = 0) -> LlamaCppStepper:
        return LlamaCppStepper(self, position_offset)

    def describe(self) -> dict[str, Any]:
        from importlib.metadata import version

        r = self.resolved
        return {"backend": self.label, "dtype": dtypes.parse(r.dtype).long,
                "device": "cpu", "gguf": str(self.path), "gguf_origin": r.origin, "gguf_type": r.file_type,
                "quantized": r.quantized, "architecture": self.arch or None,
                "kv_cache": "F32" if r.file_type == "F32" else "llama.cpp default (F16)", "flash_attn": False,
                "threads": self.threads, "llama_cpp_python": version("llama-cpp-python"),
                "implementation": "llama.cpp (eval-callback probes, probes/llamacpp.toml)",
                "not_exposed": self.not_exposed(), "faults": self.faults or None,
                "gguf_generation": self.gen_facts or None}


class LlamaCppStepper:
    """Greedy decode steps with llama.cpp's KV cache (parity generate): prefill, then one token."""

    def __init__(self, backend: LlamaCppBackend, position_offset: int = 0) -> None:
        if position_offset:
            raise UsageError("fault 'kv-position' cannot be reproduced in llama.cpp: llama_decode refuses a token whose "
                             "position does not follow the sequence's cached positions.", note="use it with --candidate torch")
        self.b, self.position_offset, self.length = backend, position_offset, 0

    def __enter__(self) -> LlamaCppStepper:
        if not self.b.is_active:
            self.b.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.b.deactivate()

    def prefill(self, ids: list[int]) -> torch.Tensor:
        import llama_cpp

        self.b.context(len(ids) + 512)
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.b.ctx), True)
        out = self.b.decode(list(ids), 0, False)
        self.length = len(ids)
        return torch.from_numpy(out[-1]).float()

    def step(self, token: int) -> torch.Tensor:
        if self.length == 0:
            raise RuntimeError("step() before prefill()")
        if self.length + 1 > self.b.n_ctx:
            raise BackendError(f"llama.cpp context of {self.b.n_ctx} tokens is full.")
        out = self.b.decode([token], self.length + self.position_offset, False)
        self.length += 1
        return torch.from_numpy(out[-1]).float()

    def eos_id(self) -> int | None:
        import llama_cpp

        eos = llama_cpp.llama_vocab_eos(llama_cpp.llama_model_get_vocab(self.b.model))
        return None if eos < 0 else int(eos)

    def stop_ids(self) -> list[int]:
        """llama.cpp's end-of-generation set (llama_vocab_is_eog over the vocabulary)."""
        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(self.b.model)
        return [t for t in range(llama_cpp.llama_vocab_n_tokens(vocab)) if llama_cpp.llama_vocab_is_eog(vocab, t)]


def generation_facts(backend: LlamaCppBackend) -> dict[str, Any]:
    """What the GGUF metadata says about generation (eos/bos ids, chat template present)."""
    keys = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.padding_token_id")
    out: dict[str, Any] = {k.removeprefix("tokenizer.ggml."): backend.meta_str(k) for k in keys}
    tmpl = backend.meta_str("tokenizer.chat_template")
    ref = backend.ref_chat_template
    out["chat_template"] = ("absent" if tmpl is None else "present" if ref is None
                            else "same as the reference tokenizer's" if tmpl.strip() == ref.strip() else "differs from the reference tokenizer's")
    return out


def reference_chat_template(source: Any) -> str | None:
    """The chat template of the reference's tokenizer (tokenizer_config.json), if any."""
    import json

    f = source.checkpoint / "tokenizer_config.json" if source.checkpoint else None
    if f is None or not f.is_file():
        return None
    try:
        t = json.loads(f.read_text()).get("chat_template")
    except (OSError, ValueError):
        return None
    return t if isinstance(t, str) else None


def create(ctx: EngineContext) -> LlamaCppBackend:
    """Entry point for ``--candidate llamacpp``."""
    o = ctx.options
    res = resolve(o, ctx.progress)  # the file prepare() chose (the runners build with the options it returned)
    work = Path(tempfile.mkdtemp(prefix="parity-llamacpp-"))
    path, notes = with_faults(res.path, list(o.faults or []), ctx.source.num_blocks, work)
    gmap = load_graph_map("llamacpp", o.probe_dirs)
    backend = LlamaCppBackend(path, res, ctx.source.config, ctx.source.num_blocks, gmap, notes)
    backend.ref_chat_template = reference_chat_template(ctx.source)
    weakref.finalize(backend, shutil.rmtree, str(work), True)
    return backend


def prepare(opts: RunOptions, progress: Any = None) -> RunOptions:
    """Before the reference is built: which GGUF file runs, and so the verdict's dtype (see
    derived_options)."""
    return derived_options(opts, resolve(opts, progress))

"""GGUF files as checkpoints (``--checkpoint FILE.gguf``, ``parity fetch``).

A GGUF file is converted once, through transformers' GGUF loader (dequantized to float32),
into a plain Hugging Face folder — config.json without ``quantization_config``,
model.safetensors, the tokenizer files (chat template inside tokenizer_config.json),
generation_config.json — which is then read like any checkpoint folder.

Converted folders live in ``$PARITY_CACHE/gguf/<stem>-<key>/`` (default
``~/.cache/parity``). The key hashes the file's resolved path, size and modification time
(ns): a lookup costs a ``stat``, not a hash of gigabytes; touching, replacing or moving the
file converts it again. The file's sha256 is recorded in the folder's ``parity-gguf.json``.
Folders are written as one unit: a temporary folder beside the target, renamed at the end.

Needs the ``gguf`` and ``accelerate`` packages (``pip install 'parity-debugger[gguf]'``);
they are imported only here, only when a GGUF file is read.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parity.errors import CheckpointError

MAGIC = b"GGUF"
PACKAGES = ("gguf", "accelerate")
META = "parity-gguf.json"
FORMAT = 2  # 2: conversions checked complete (a folder of format 1 may hold invented weights)
# Families parity has whose GGUF architecture transformers' loader reads.
SUPPORTED = ("llama", "qwen2")
SUPPORTED_NOTE = ("parity reads GGUF files of llama and qwen2 models (through transformers' GGUF loader); "
                  "Qwen v1 (--model qwen) has no GGUF support there: give its Hugging Face folder")


def cache_root() -> Path:
    """``$PARITY_CACHE``, default ``~/.cache/parity`` (shared with the ONNX exports)."""
    return Path(os.environ.get("PARITY_CACHE") or Path.home() / ".cache" / "parity")


def is_gguf(path: str | Path) -> bool:
    """A file named ``*.gguf`` or starting with the GGUF magic."""
    p = Path(path)
    if not p.is_file():
        return False
    if p.suffix.lower() == ".gguf":
        return True
    with p.open("rb") as f:
        return f.read(4) == MAGIC


def require_packages() -> None:
    missing = [p for p in PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        raise CheckpointError(f"reading a GGUF file needs the package{'s' if len(missing) > 1 else ''} {' and '.join(missing)}.",
                              note="pip install 'parity-debugger[gguf]' (or: pip install gguf accelerate)")


@dataclass(frozen=True)
class GGUFInfo:
    path: Path
    architecture: str  # general.architecture, as llama.cpp names it
    name: str
    model_type: str  # the transformers model_type it converts to
    header: Any = None  # parity.loading.gguf_header.Header


def read_info(path: Path) -> GGUFInfo:
    """Header facts of a GGUF file; a truncated, foreign or malformed file is a one-line error
    (parity.loading.gguf_header reads the header with every count bounded by the file's size)."""
    from parity.loading.gguf_header import read_header

    head = read_header(path)
    arch, name = head.fields.get("general.architecture"), head.fields.get("general.name")
    arch = arch if isinstance(arch, str) and arch else "?"
    name = name if isinstance(name, str) else ""
    return GGUFInfo(path, arch, name, model_type_of(arch, name), head)


def model_type_of(arch: str, name: str) -> str:
    """The transformers model_type of a GGUF architecture (as transformers' loader maps it)."""
    if "llama" in arch and "mistral" in name.lower():
        return "mistral"
    return {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe"}.get(arch, arch)


def check_supported(info: GGUFInfo) -> None:
    """Refuse architectures no parity family can run (before any conversion)."""
    if info.model_type in SUPPORTED:
        from parity.loading.gguf_header import check_model

        if info.header is not None:
            check_model(info.header, info.architecture)
        return
    what = "Qwen v1 ('qwen')" if info.architecture == "qwen" else f"'{info.architecture}'"
    raise CheckpointError(f"GGUF file '{info.path}' holds a {what} model, which parity cannot read from GGUF.", note=SUPPORTED_NOTE)


def cache_key(path: Path) -> str:
    st = path.stat()
    blob = json.dumps({"fmt": FORMAT, "path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_folder(path: Path) -> Path:
    return cache_root() / "gguf" / f"{path.stem}-{cache_key(path)}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hf_folder(path: Path, check: Callable[[GGUFInfo], None] | None = None,
              say: Callable[[str], None] | None = None) -> Path:
    """The converted folder of GGUF file ``path``: from the cache, or converted now (after
    ``check(info)``, which may refuse it)."""
    folder = cached_folder(path)
    if (folder / "config.json").is_file():
        return folder
    info = read_info(path)
    check_supported(info)
    if check is not None:
        check(info)
    require_packages()
    _check_memory(info)
    _check_cache(folder)
    (say or _say)(f"converting {path.name} ({info.architecture}) to a Hugging Face folder in {folder} (once)")
    write_folder(path, folder)
    return folder


def _check_cache(dest: Path) -> None:
    """The cache folder can be made and written ($PARITY_CACHE a file or read-only: a clear error
    before a conversion starts)."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=f".{dest.name}.probe-", dir=dest.parent))
    except OSError as exc:
        raise cache_error(exc, dest) from None


def _check_memory(info: GGUFInfo) -> None:
    """The dequantized float32 weights must fit in free memory (before transformers allocates them)."""
    from parity.loading.gguf_header import float32_bytes
    from parity.loading.limits import available_bytes

    need, have = float32_bytes(info.header), available_bytes("cpu")
    if need > have:
        raise CheckpointError(f"GGUF file '{info.path}': its weights need {need / (1 << 30):.1f} GiB as float32 to convert, "
                              f"and {have / (1 << 30):.1f} GiB is free.", note="convert it on a machine with more memory")


def _say(what: str) -> None:
    print(f"[parity] {what} ...", file=sys.stderr, flush=True)  # a progress line, as the commands' stages


# -- conversion ------------------------------------------------------------------------------

@contextlib.contextmanager
def staging(dest: Path, replace: bool = False) -> Iterator[Path]:
    """A temporary folder beside ``dest``, renamed to ``dest`` when the block succeeds and
    removed when it fails: ``dest`` is complete or absent, never half-written."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    except OSError as exc:
        raise cache_error(exc, dest) from None
    try:
        try:
            yield tmp
        except Exception as exc:
            from parity.outputs import errno_of

            if errno_of(exc) is not None and not isinstance(exc, CheckpointError):
                raise cache_error(exc, dest) from None
            raise
        _follow_umask(tmp)
        old = None
        if dest.exists() and (replace or not (dest / "config.json").is_file()):  # a stale or unfinished one
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            dest.rename(old)
        try:
            tmp.rename(dest)
        except OSError:
            if not (dest / "config.json").is_file():  # not a concurrent writer that won the race
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cache_error(exc: BaseException, dest: Path) -> CheckpointError:
    """A cache folder parity cannot make or fill ($PARITY_CACHE a file, read-only, full)."""
    from parity.outputs import FULL, errno_of, write_error

    err = write_error(exc, dest, "cache folder")
    note = ("free space there, or set PARITY_CACHE to a folder on another disk" if errno_of(exc) in FULL else
            f"set PARITY_CACHE to a folder you can write to (now: {cache_root()})")
    return CheckpointError(err.message, note=note)


def _follow_umask(folder: Path) -> None:
    """mkdtemp and safetensors make private files; the cache follows the user's umask."""
    mask = os.umask(0)
    os.umask(mask)
    folder.chmod(0o777 & ~mask)
    for f in folder.iterdir():
        f.chmod(0o666 & ~mask)


def write_folder(path: Path, dest: Path, extra_meta: dict[str, Any] | None = None, replace: bool = False) -> dict[str, Any]:
    """Convert GGUF ``path`` into the Hugging Face folder ``dest`` (atomically); returns the
    facts recorded in ``parity-gguf.json``."""
    require_packages()
    t0 = time.perf_counter()
    with staging(dest, replace) as tmp:
        model, tokenizer, why = _load(path)
        _save_config(model, tmp)
        _save_weights(model, tmp)
        tok_files = _save_tokenizer(tokenizer, tmp) if tokenizer is not None else []
        gen = _save_generation_config(model, tmp)
        import transformers

        meta = {"format": FORMAT, "gguf": str(path.resolve()), "gguf_sha256": sha256_file(path),
                "gguf_size": path.stat().st_size, "transformers": transformers.__version__,
                "model_type": model.config.model_type, "dtype": "float32", "tokenizer": tok_files or f"none ({why})",
                "generation_config": gen, "seconds": round(time.perf_counter() - t0, 1)}
        meta.update(extra_meta or {})
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
        del model
    return meta


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No progress bars or warnings while loading (the GGUF loader's tqdm bar writes to stderr
    whatever transformers' settings say); failures still raise."""
    import io

    from transformers.utils import logging as hf_logging

    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _load(path: Path) -> tuple[Any, Any, str]:
    """(float32 model, tokenizer or None, why there is no tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet_transformers():
        try:
            model, info = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                               output_loading_info=True)
        except MemoryError:
            raise CheckpointError(f"GGUF file '{path}': out of memory while converting it.",
                                  note="convert it on a machine with more memory") from None
        except Exception as exc:  # noqa: BLE001 - transformers' loader on a file it cannot read: the file's fault
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise CheckpointError(f"transformers cannot load GGUF file '{path}': {type(exc).__name__}: {first}",
                                  note=SUPPORTED_NOTE) from None
        _check_complete(path, model, info)
        try:
            return model, AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name), ""
        except Exception as exc:  # a GGUF without (readable) tokenizer metadata: weights only
            return model, None, (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _check_complete(path: Path, model: Any, info: dict[str, Any]) -> None:
    """Every weight of the model read from the file: transformers initializes missing ones at
    random, and a model parity cannot read completely is never compared."""
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    missing = sorted(set(info.get("missing_keys") or ()) - tied)
    bad = sorted(set(info.get("mismatched_keys") or ()))
    if missing or bad:
        what = missing or [str(b) for b in bad]
        raise CheckpointError(f"GGUF file '{path}' lacks {len(what)} weight(s) the model needs "
                              f"({', '.join(map(str, what[:3]))}{', ...' if len(what) > 3 else ''}).",
                              note="parity compares only checkpoints it can read completely: convert the model again")


def _save_config(model: Any, folder: Path) -> None:
    import copy

    cfg = copy.deepcopy(model.config)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config  # the weights are plain float32 now
    cfg.dtype = "float32"
    cfg.save_pretrained(str(folder))
    _rewrite_json(folder / "config.json", drop=("quantization_config",))


def _rewrite_json(path: Path, drop: tuple[str, ...] = (), set_: dict[str, Any] | None = None) -> None:
    """Drop keys (and private ``_...`` ones) that describe the loading, not the model."""
    data = json.loads(path.read_text())
    data = {k: v for k, v in data.items() if k not in drop and not k.startswith("_")}
    data.update(set_ or {})
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _save_weights(model: Any, folder: Path) -> None:
    """model.safetensors, one copy of tied tensors (lm_head tied to the embedding is left out,
    as save_pretrained does)."""
    from safetensors.torch import save_file

    seen: set[tuple[int, tuple[int, ...]]] = set()
    tensors = {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), tuple(t.shape))
        if key in seen and t.numel():
            continue
        seen.add(key)
        tensors[name] = t.detach().to("cpu").contiguous()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _save_tokenizer(tokenizer: Any, folder: Path) -> list[str]:
    before = set(os.listdir(folder))
    try:
        tokenizer.save_pretrained(str(folder), save_jinja_files=False)  # chat template inside tokenizer_config.json
    except TypeError:
        tokenizer.save_pretrained(str(folder))
    made = sorted(set(os.listdir(folder)) - before)
    if "tokenizer_config.json" in made:  # a class name transformers 4 knows too; no loading state
        _rewrite_json(folder / "tokenizer_config.json", drop=("is_local", "local_files_only"),
                      set_={"tokenizer_class": "PreTrainedTokenizerFast"} if "tokenizer.json" in made else None)
    return made


def _save_generation_config(model: Any, folder: Path) -> bool:
    gen = getattr(model, "generation_config", None)
    if gen is None or gen.eos_token_id is None:
        return False
    gen.save_pretrained(str(folder))
    return True

"""GGUF files made by llama.cpp's own converter (``convert_hf_to_gguf.py``).

The converter ships inside llama.cpp's source, which PyPI carries as the source distribution
of ``llama-cpp-python`` (``vendor/llama.cpp``). parity uses the converter of the *installed*
llama-cpp-python version, so the engine and the converter come from one llama.cpp commit:
``converter_dir`` downloads that sdist once (``pip download --no-binary :all: --no-deps``,
which pip's cache serves after the first time), extracts only ``convert_hf_to_gguf.py``,
``conversion/`` and ``gguf-py/`` into ``$PARITY_CACHE/llamacpp/llama.cpp-<version>/`` and
runs it unmodified in a subprocess. ``$PARITY_LLAMACPP_SRC`` points at a llama.cpp checkout
instead (offline machines). The converter needs ``sentencepiece`` (it tries a
``tokenizer.model`` first for llama and qwen2).

``save_hf_folder`` writes a model (a preset's seeded weights) as a Hugging Face folder the
converter reads. A preset has no tokenizer; the folder gets a stand-in ``tokenizer.model``
(sentencepiece: ``<unk>``, ``<s>``, ``</s>`` and the 256 byte pieces), which the converter pads
to the model's vocabulary with ``[PADn]`` tokens: parity feeds token ids, so the forward pass
never reads the vocabulary's text.

Converted files are cached in ``$PARITY_CACHE/llamacpp/gguf/`` under a key of what went in
(the folder's files, sizes and modification times, the outtype and the llama.cpp version) and
written atomically (temporary name, then rename).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from parity.errors import CheckpointError, ParityError

DIST = "llama-cpp-python"
SOURCE_ENV = "PARITY_LLAMACPP_SRC"
CONVERTER = "convert_hf_to_gguf.py"
MEMBERS = (CONVERTER, "conversion/", "gguf-py/")
OUTTYPES = ("f32", "f16", "bf16", "q8_0")
FORMAT = 1
Say = Callable[[str], None]


class ConversionError(CheckpointError):
    """llama.cpp's converter could not be found, fetched or run."""


def _quiet(_what: str) -> None:
    pass


def installed_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DIST)
    except PackageNotFoundError:
        return None


def converter_dir(say: Say | None = None) -> Path:
    """The folder holding ``convert_hf_to_gguf.py`` (with ``conversion/`` and ``gguf-py/``)."""
    env = os.environ.get(SOURCE_ENV)
    if env:
        p = Path(env)
        if not (p / CONVERTER).is_file():
            raise ConversionError(f"${SOURCE_ENV}={env} holds no {CONVERTER}.", note="point it at a llama.cpp checkout")
        return p
    from parity.loading.gguf import cache_root, staging

    ver = installed_version()
    if ver is None:
        raise ConversionError(f"converting to GGUF needs llama.cpp's converter; {DIST} is not installed.",
                              note=f"pip install 'parity-debugger[llamacpp]' (or set ${SOURCE_ENV} to a llama.cpp checkout)")
    dest = cache_root() / "llamacpp" / f"llama.cpp-{ver}"
    if (dest / CONVERTER).is_file():
        return dest
    (say or _quiet)(f"fetching llama.cpp's converter from the {DIST} {ver} source distribution (once)")
    with tempfile.TemporaryDirectory() as work:
        sdist = _download_sdist(ver, Path(work))
        with staging(dest) as tmp:
            _extract(sdist, tmp)
            (tmp / "config.json").write_text(json.dumps({"llama-cpp-python": ver, "sdist": sdist.name}) + "\n")
    return dest


def _download_sdist(ver: str, work: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
           f"{DIST}=={ver}", "-d", str(work), "--disable-pip-version-check", "--no-input", "--progress-bar", "off"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(work.glob("*.tar.gz"))
    if proc.returncode != 0 or len(found) != 1:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        last = ([ln for ln in lines if ln.startswith("ERROR:")] or lines or ["no output"])[-1]
        raise ConversionError(f"cannot download the {DIST}=={ver} source distribution: {last.strip()}",
                              note=f"check the network, or set ${SOURCE_ENV} to a llama.cpp checkout")
    return found[0]


def _extract(sdist: Path, dest: Path) -> None:
    """Only the converter's files of ``vendor/llama.cpp``, no links, nothing outside ``dest``."""
    n = 0
    with tarfile.open(sdist, "r:gz") as tf:
        for m in tf.getmembers():
            parts = Path(m.name).parts
            if len(parts) < 4 or parts[1:3] != ("vendor", "llama.cpp") or not m.isfile():
                continue
            rel = "/".join(parts[3:])
            if not any(rel == x or rel.startswith(x) for x in MEMBERS) or ".." in parts:
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(m)
            assert src is not None
            target.write_bytes(src.read())
            n += 1
    if not (dest / CONVERTER).is_file():
        raise ConversionError(f"{sdist.name} holds no vendor/llama.cpp/{CONVERTER} ({n} files extracted).",
                              note=f"set ${SOURCE_ENV} to a llama.cpp checkout")


# -- running the converter ---------------------------------------------------------------------

def folder_key(folder: Path, outtype: str) -> str:
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file())
    blob = json.dumps({"fmt": FORMAT, "dir": str(folder.resolve()), "files": files, "outtype": outtype,
                       "llamacpp": installed_version() or os.environ.get(SOURCE_ENV)})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def convert(folder: Path, outtype: str, name: str, say: Say | None = None, key: str | None = None) -> Path:
    """``folder`` (a Hugging Face model folder) converted to GGUF ``outtype`` by llama.cpp's
    converter; cached (``key`` replaces the folder's own key, e.g. for a temporary folder)."""
    from parity.loading.gguf import cache_root

    if outtype not in OUTTYPES:
        raise ParityError(f"unknown GGUF type '{outtype}'.", note="valid: " + ", ".join(OUTTYPES))
    out = cache_root() / "llamacpp" / "gguf" / f"{name}-{outtype}-{key or folder_key(folder, outtype)}.gguf"
    if out.is_file():
        return out
    conv = converter_dir(say)
    (say or _quiet)(f"converting {name} to GGUF {outtype.upper()} with llama.cpp's {CONVERTER}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    cmd = [sys.executable, str(conv / CONVERTER), str(folder), "--outfile", str(tmp), "--outtype", outtype]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=str(conv))
        if proc.returncode != 0 or not tmp.is_file():
            raise ConversionError(f"llama.cpp's {CONVERTER} failed on {folder}: {converter_error(proc.stderr + proc.stdout)}",
                                  note=f"the converter's whole output: run {' '.join(cmd[1:])}")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    (say or _quiet)(f"converted in {time.perf_counter() - t0:.1f}s: {out}")
    return out


def converter_error(text: str) -> str:
    """The converter's reason: its last exception line, else its last error log line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    exc = [ln for ln in lines if ln.split(":")[0].endswith(("Error", "Exception"))]
    err = [ln for ln in lines if ln.startswith("ERROR:")]
    return (exc or err or lines or ["no output"])[-1][:400]


# -- a model as a folder the converter reads ---------------------------------------------------

def save_hf_folder(model: Any, config_dict: dict[str, Any], architecture: str, dest: Path) -> None:
    """``model``'s weights (float32 safetensors), its config and a stand-in tokenizer."""
    from safetensors.torch import save_file

    cfg = {**config_dict, "architectures": [architecture], "torch_dtype": "float32"}
    cfg.setdefault("model_type", getattr(getattr(model, "config", None), "model_type", None))
    (dest / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    seen: set[tuple[int, tuple[int, ...]]] = set()
    tensors = {}
    for k, t in model.state_dict().items():
        ident = (t.data_ptr(), tuple(t.shape))
        if ident in seen:  # a tied lm_head: the converter reads the embedding
            continue
        seen.add(ident)
        tensors[k] = t.detach().to("cpu").float().contiguous()
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    write_standin_tokenizer(dest / "tokenizer.model")


def write_standin_tokenizer(path: Path) -> None:
    """A sentencepiece model of ``<unk>``, ``<s>``, ``</s>`` and the 256 byte pieces."""
    try:
        from sentencepiece import sentencepiece_model_pb2 as spm
    except ImportError:
        raise ConversionError("llama.cpp's converter needs the sentencepiece package.",
                              note="pip install 'parity-debugger[llamacpp]' (or: pip install sentencepiece)") from None
    m = spm.ModelProto()
    m.trainer_spec.model_type = spm.TrainerSpec.BPE
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.unk_id, m.trainer_spec.bos_id, m.trainer_spec.eos_id, m.trainer_spec.pad_id = 0, 1, 2, -1
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = False
    for text, kind in (("<unk>", spm.ModelProto.SentencePiece.UNKNOWN), ("<s>", spm.ModelProto.SentencePiece.CONTROL),
                       ("</s>", spm.ModelProto.SentencePiece.CONTROL)):
        p = m.pieces.add()
        p.piece, p.score, p.type = text, 0.0, kind
    for b in range(256):
        p = m.pieces.add()
        p.piece, p.score, p.type = f"<0x{b:02X}>", 0.0, spm.ModelProto.SentencePiece.BYTE
    path.write_bytes(m.SerializeToString())


# -- which GGUF file, in which precision --------------------------------------------------------

#: GGUF general.file_type (llama.cpp's llama_ftype) -> the dtype of its float tensors
FILE_TYPES = {0: ("F32", "fp32"), 1: ("F16", "fp16"), 32: ("BF16", "bf16"), 2: ("Q4_0", None), 3: ("Q4_1", None),
              7: ("Q8_0", None), 8: ("Q5_0", None), 9: ("Q5_1", None), 10: ("Q2_K", None), 15: ("Q4_K_M", None),
              17: ("Q5_K_M", None), 18: ("Q6_K", None)}


def file_type(path: Path) -> tuple[str, str | None]:
    """(llama.cpp's name of the file's type, the float dtype it runs in or None when quantized)."""
    from gguf import GGUFReader

    from parity.loading.gguf import read_info

    read_info(path)  # not a GGUF, unreadable or truncated: a one-line CheckpointError
    r = GGUFReader(str(path), "r")
    f = r.fields.get("general.file_type")
    code = int(f.parts[f.data[0]][0]) if f is not None else None
    if code in FILE_TYPES:
        return FILE_TYPES[code]
    kinds = {t.tensor_type.name for t in r.tensors if len(t.shape) > 1 and t.name.endswith(".weight")}
    if kinds <= {"F32"}:
        return "F32", "fp32"
    if kinds <= {"F16", "F32"}:
        return "F16", "fp16"
    return (f"file_type {code}" if code is not None else "/".join(sorted(kinds))), None


def pinned_gguf(name: str, say: Say | None = None) -> Path:
    """The GGUF file of a fetched model (``parity fetch NAME`` keeps only its converted folder):
    downloaded (pip's cache) and extracted once, both sha256 checked, into
    ``$PARITY_CACHE/llamacpp/fetched/``."""
    from parity.loading import fetch
    from parity.loading.gguf import cache_root

    pin = fetch.get(name)
    dest = cache_root() / "llamacpp" / "fetched" / Path(pin.member).name
    if dest.is_file() and dest.stat().st_size > 0:
        return dest
    (say or _quiet)(f"extracting {Path(pin.member).name} from {pin.wheel_name} (once)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as work:
        whl = fetch.download(pin, Path(work))
        fetch.check_sha256(whl, pin.wheel_sha256, f"wheel {whl.name}")
        got = fetch.extract(whl, pin.member, Path(work), pin.gguf_sha256)
        got.replace(dest)
    return dest

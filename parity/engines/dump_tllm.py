"""TensorRT-LLM's dump layouts, read as the real writers lay them out (parity.engines.dumps
turns what is found here into a :class:`~parity.engines.dumps.Dump`).

* **Python session** (``ModelRunner`` / ``GenerationSession`` with ``debug_mode=True``):
  ``tllm_debug/PP_<pp rank>/TP_<tp rank>/<name>-step<N>.npy`` (plus ``.txt`` twins), relative
  to the working directory, ``/`` in a name written as ``.``; one folder per rank
  (tensorrt_llm/runtime/generation.py @ 2340c776, ``dump_debug_buffers``). Step 0 is the
  context phase (every prompt token); it is the one read. Older releases wrote
  ``<name>.npy`` without a step, overwritten at every step: such files hold the *last* step
  and are read only when they cover the prompt (``max_new_tokens=1``). bf16 tensors are
  saved through ``_utils.torch_to_numpy`` as the void dtype ``V2`` (numpy has no bfloat16;
  ``np.save`` drops the dtype's metadata): read as bfloat16. The buffer holds every engine
  input and output, named as ``_get_context_shape_buffer`` names them (``ENGINE_IO``).
  Pipeline stages ``PP_<k>`` hold layer-local native names (each stage's layers are 0..n-1):
  they are merged with each stage's first global layer, read from the engine's
  ``config.json`` (``pretrained_config.mapping``, ``Mapping.pp_layers``) placed in the dump
  folder, or refused; canonical names written by ``mark_probes`` are global already.
* **C++ executor** (``DebugConfig``): ``$TMPDIR/tllm_debug/PP_<pp size>/TP_<tp size>/
  iteration_<N>/<name>.npy`` -- the numbers are the parallel *sizes*, so every rank writes the
  same folder (cpp/tensorrt_llm/batch_manager/utils/debugUtils.cpp @ 3585984b,
  ``getOutputPath``); bf16 is converted to float32 on save (runtime/utils/numpyUtils.cpp
  @ 05316d33, ``saveNpy``). The lowest iteration is read. With TP > 1 only probes that are
  the same on every rank (all-reduced) can be trusted: sharded ones are refused, naming the
  Python session as the way to dump them.
* **PyTorch backend** (``tensorrt_llm._torch.debug.debug_hook``): ``<dest, default
  ./data_dump>/rank<N>/<i.Module>-<j.Module>-...-<input|output>.<name>.pt``, every module's
  inputs and outputs, ``<name>`` the forward's argument names by position (outputs too), then
  a counter (tensorrt_llm/_torch/debug/debug_hook.py @ 135eb8be, ``dump_tensor``). Only
  names the name map maps are read; the rest are skipped.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parity.capture import probes as canon
from parity.errors import ProbeError

PICKLES = (".pkl", ".pickle")
#: every engine I/O tensor name the Python session puts in its debug buffer
#: (generation.py @ 2340c776: _get_context_shape_buffer / _get_next_step_shape_buffer) or the
#: C++ executor dumps (request_ids), plus the model's PP hand-over tensors (modeling_utils.py).
ENGINE_IO = [
    "input_ids", "position_ids", "context_lengths", "last_token_ids", "cache_indirection", "sequence_length",
    "request_ids", "host_*", "kv_cache_*", "*_kv_cache_*", "past_key_value_*", "present_key_value_*",
    "*_present_key_value_*", "cross_*", "encoder_*", "attention_mask", "all_reduce_workspace", "hidden_states_input",
    "hidden_states_output", "prompt_embedding_table", "tasks", "prompt_vocab_size", "*_lora_ranks_*",
    "*_lora_weights_pointers_*", "lora_*", "medusa_*", "spec_decoding_*", "mrope_*", "*_block_offsets",
    "*_block_pointers", "*pool_pointers", "*pool_mapping", "skip_cross_attn_blocks", "language_adapter_routings",
    "cum_log_probs", "log_probs", "output_ids", "gen_attention_mask",
]


class DumpError(ProbeError):
    """A dump folder that cannot be read as asked."""


@dataclass
class Found:
    """What a layout reader found: per canonical probe, one file per tensor-parallel rank."""

    shards: dict[str, list[Path]] = field(default_factory=dict)
    tp_rules: dict[str, str | None] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    ranks: int = 1
    notes: list[str] = field(default_factory=list)
    hint: str | None = None  # added to a shape error: what to change in how the dump was made


# -- files ----------------------------------------------------------------------------------------

def load_array(path: Path) -> Any:
    """One tensor file as a torch tensor; pickles refused, damage reported on one line."""
    import numpy as np
    import torch

    if path.suffix in PICKLES:
        raise DumpError(f"refusing to load pickle file {path}.", note="dumps must be .npy, .pt (tensors only) or safetensors")
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            if arr.dtype.kind == "V" and arr.dtype.itemsize == 2:  # bfloat16 as torch_to_numpy saves it
                return torch.from_numpy(np.ascontiguousarray(arr).view(np.int16)).view(torch.bfloat16)
            if arr.dtype.kind == "V":
                raise DumpError(f"{path} holds {arr.dtype.itemsize}-byte raw values (dtype {arr.dtype.str}; float8?).",
                                note="probe tensors are float32, float16 or bfloat16")
            return torch.from_numpy(np.ascontiguousarray(arr))
        if path.suffix == ".pt":
            t = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(t, torch.Tensor):
                raise DumpError(f"{path} holds a {type(t).__name__}, not a tensor.")
            return t
    except DumpError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DumpError(f"refusing {path}: it holds pickled objects, not a plain array.") from None
        raise DumpError(f"cannot read {path}: {first_line(exc)} (truncated or not a .npy file?)") from None
    except Exception as exc:  # noqa: BLE001 - torch/numpy raise many types for damaged files
        what = "pickled objects other than tensors" if "weights_only" in str(exc) or "Unpickl" in type(exc).__name__ else "damaged or truncated"
        raise DumpError(f"cannot read {path}: {what} ({type(exc).__name__}: {first_line(exc)[:160]})") from None
    raise DumpError(f"unsupported tensor file {path}.", note="dumps hold .npy, .pt or .safetensors")


def first_line(exc: BaseException) -> str:
    s = str(exc).strip()
    return s.splitlines()[0] if s else type(exc).__name__


def numbered_dirs(parent: Path, prefix: str) -> list[Path]:
    dirs = [d for d in parent.iterdir() if d.is_dir() and re.fullmatch(re.escape(prefix) + r"\d+", d.name)]
    return sorted(dirs, key=lambda d: int(d.name[len(prefix):]))


def _refuse_pickles(folder: Path) -> None:
    for f in folder.iterdir():
        if f.suffix in PICKLES:
            raise DumpError(f"refusing to load pickle file {f}.", note="dumps must be .npy, .pt (tensors only) or safetensors")


# -- TensorRT engines: Python session and C++ executor --------------------------------------------

_STEP = re.compile(r"^(?P<name>.+?)(?:-step(?P<step>\d+))?$")


def tllm_root(folder: Path) -> Path:
    return folder if folder.name == "tllm_debug" or any(folder.glob("PP_*")) else folder / "tllm_debug"


def is_executor(root: Path) -> bool:
    return any(tp.is_dir() and numbered_dirs(tp, "iteration_") for tp in root.glob("PP_*/TP_*"))


def _session_files(tp_dir: Path) -> tuple[dict[str, Path], bool]:
    """(name -> .npy file of its earliest step, True when no file carries a step number)."""
    _refuse_pickles(tp_dir)
    stepped: dict[str, tuple[int, Path]] = {}
    plain: dict[str, Path] = {}
    for f in sorted(tp_dir.iterdir()):
        if f.suffix != ".npy":
            continue
        m = _STEP.match(f.stem)
        name = m.group("name")
        if m.group("step") is None:
            plain[name] = f
        elif name not in stepped or int(m.group("step")) < stepped[name][0]:
            stepped[name] = (int(m.group("step")), f)
    return {**plain, **{k: v[1] for k, v in stepped.items()}}, bool(plain) and not stepped


def read_session(folder: Path, nm: Any) -> Found:
    root = tllm_root(folder)
    pps = numbered_dirs(root, "PP_")
    if not pps:
        raise DumpError(f"{root} has no PP_<n> folders.")
    found = Found()
    offsets = _stage_offsets(folder, len(pps)) if len(pps) > 1 else [0]
    tps_count = None
    for k, pp in enumerate(pps):
        tps = numbered_dirs(pp, "TP_")
        if not tps:
            raise DumpError(f"{pp} has no TP_<n> folders.")
        if tps_count not in (None, len(tps)):
            raise DumpError(f"{root}: pipeline stages have different numbers of TP_ folders.")
        tps_count = len(tps)
        per_rank, flags = zip(*(_session_files(tp) for tp in tps))
        if all(flags):
            found.meta["unstepped"] = True
            found.hint = ("these files carry no step number: TensorRT-LLM rewrote them at every generation step, so "
                          "they hold the last step, not the prompt; generate with max_new_tokens=1")
        offset = offsets[k] if offsets is not None else None
        collect(found, nm, list(per_rank), [tp.name for tp in tps], pp, offset, stage=pp.name)
        ids = per_rank[0].get("input_ids")
        if ids is not None and "input_ids" not in found.meta:
            found.meta["input_ids_file"] = ids
    found.ranks = tps_count or 1
    return found


def read_executor(folder: Path, nm: Any) -> Found:
    root = tllm_root(folder)
    tps = [tp for tp in root.glob("PP_*/TP_*") if tp.is_dir() and numbered_dirs(tp, "iteration_")]
    if len(tps) != 1:
        raise DumpError(f"{root} holds C++ executor dumps of {len(tps)} parallel configurations "
                        f"({', '.join(sorted(str(t.relative_to(root)) for t in tps))}).",
                        note="keep one PP_<size>/TP_<size> folder per dump")
    tp = tps[0]
    pp_size, tp_size = int(tp.parent.name[3:]), int(tp.name[3:])
    base = numbered_dirs(tp, "iteration_")[0]
    files, _ = _session_files(base)
    found = Found(meta={"executor": {"pp_size": pp_size, "tp_size": tp_size, "iteration": base.name}})
    # every rank wrote this one folder: native layer names of several stages overwrote each other
    collect(found, nm, [files], [base.name], base, 0 if pp_size == 1 else None, stage=f"PP size {pp_size}",
            note=EXECUTOR_NOTE)
    if tp_size > 1:
        found.notes.append(f"C++ executor dump with tensor parallelism {tp_size}: every rank wrote the same folder "
                           f"({tp.relative_to(root)}), so only probes that are the same on every rank can be compared")
        found.hint = ("the C++ executor writes one folder for all tensor-parallel ranks (TP_<size>), so a sharded "
                      "tensor is whichever rank wrote last: dump it with the Python session (ModelRunner, "
                      "debug_mode=True), one TP_<rank> folder per rank")
    if "input_ids" in files:
        found.meta["input_ids_file"] = files["input_ids"]
    return found


def _stage_offsets(folder: Path, stages: int) -> list[int] | None:
    """First global layer of each pipeline stage from the engine's config.json (None: no config)."""
    for cand in (folder / "config.json", folder.parent / "config.json", tllm_root(folder).parent / "config.json"):
        if cand.is_file():
            break
    else:
        return None
    from parity.validate import read_json

    raw = read_json(cand, DumpError, "engine config")
    pre = raw.get("pretrained_config", raw) if isinstance(raw, dict) else {}
    mapping = pre.get("mapping") if isinstance(pre, dict) else None
    layers = pre.get("num_hidden_layers") if isinstance(pre, dict) else None
    pp = mapping.get("pp_size") if isinstance(mapping, dict) else None
    if not isinstance(layers, int) or not isinstance(pp, int) or pp != stages:
        raise DumpError(f"{cand}: expected pretrained_config.num_hidden_layers and mapping.pp_size = {stages} "
                        f"(the dump has {stages} PP_ folders), found {layers!r} and {pp!r}.",
                        note="use the config.json of the engine that wrote this dump")
    sizes = mapping.get("pp_partition") or [layers // pp + (1 if r < layers % pp else 0) for r in range(pp)]
    return [sum(sizes[:k]) for k in range(pp)]


LOCAL_NOTE = ("put the engine's config.json (its mapping gives each stage's layers) in the dump folder, or mark "
              "probes with parity.engines.trtllm_engine.mark_probes (global names)")
EXECUTOR_NOTE = ("the C++ executor writes every pipeline stage into this one folder, so layer-local names overwrite "
                 "each other: mark probes with parity.engines.trtllm_engine.mark_probes (global names)")


def collect(found: Found, nm: Any, per_rank: list[dict[str, Path]], rank_names: list[str], where: Path,
            offset: int | None, stage: str = "", skip_unmapped: bool = False, note: str = LOCAL_NOTE) -> None:
    """Add each tensor name present on every rank as its canonical probe's shards. ``offset``
    is the stage's first global layer for layer-local (mapped) names; None refuses them."""
    for n in sorted(set().union(*per_rank)):
        lacking = [rank_names[r] for r, files in enumerate(per_rank) if n not in files]
        if lacking:
            raise DumpError(f"dump {where}: '{n}' is missing from {', '.join(lacking)} (other ranks have it).")
        try:
            probe, tp = nm.canonical(n)
        except DumpError:
            if skip_unmapped:
                continue
            raise
        if probe is None:
            continue
        block = canon.parse(probe).block
        if block is not None and not canon.is_canonical(n) and offset != 0:
            if offset is None:
                raise DumpError(f"dump {where}: '{n}' is a layer-local name and the dump has several pipeline stages "
                                f"({stage}): the same name stands for a different layer on each stage.", note=note)
            probe = probe.replace(f"blocks.{block}.", f"blocks.{block + offset}.", 1)
        if probe in found.shards:
            raise DumpError(f"dump {where}: '{probe}' is dumped twice (as '{n}' and another tensor / stage).")
        found.shards[probe] = [files[n] for files in per_rank]
        found.tp_rules[probe] = tp


# -- PyTorch backend ------------------------------------------------------------------------------

def read_torch(folder: Path, nm: Any) -> Found:
    base = folder / "data_dump" if not numbered_dirs(folder, "rank") and (folder / "data_dump").is_dir() else folder
    ranks = numbered_dirs(base, "rank")
    if not ranks:
        raise DumpError(f"{folder} has no rank<N> folders.")
    per_rank = []
    for r in ranks:
        _refuse_pickles(r)
        per_rank.append({f.name: f for f in sorted(r.iterdir()) if f.suffix == ".pt"})
    found = Found(ranks=len(ranks))
    # every module's inputs and outputs are dumped: only what the name map maps is read
    collect(found, nm, per_rank, [r.name for r in ranks], base, 0, skip_unmapped=True)
    return found

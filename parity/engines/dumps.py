"""Dumps: probe tensors written by any runtime, read back under canonical names.

Layouts (``detect``):

* **parity**: ``manifest.json`` (format ``parity-dump``, model, dtype, input ids, probe
  list with shapes) + ``tensors.safetensors`` keyed by canonical names. Written by
  ``parity dump`` (``write_dump``).
* **tllm**: TensorRT-LLM engine debug dumps of the Python session,
  ``tllm_debug/PP_<rank>/TP_<rank>/<name>-step<N>.npy``; **tllm-executor**: the C++
  executor's ``tllm_debug/PP_<size>/TP_<size>/iteration_<N>/<name>.npy``; **torch**: the
  PyTorch backend's ``data_dump/rank<N>/...-output.<name>.pt``. How each is read (steps,
  ranks, pipeline stages, bf16 files) is described in parity.engines.dump_tllm.

Names are mapped to canonical probes by a *name map* (TOML; ``--dump-map``): exact names
or regular expressions with a named group ``i`` (block index, ``offset`` added), e.g.

    [[tensor]]
    pattern = 'transformer\\.layers\\.(?P<i>\\d+)\\.mlp_output'
    probe = "blocks.{i}.mlp_out"
    tp = "replicated"            # optional: replicated | sum | concat
    ignore = ["host_*", "kv_cache_*"]   # (top level) names to skip

Order: the map's patterns, then its ``ignore`` globs (which can skip canonical names too),
then canonical names map to themselves, then engine I/O tensors (``dump_tllm.ENGINE_IO``)
are skipped; any other name is an error (the PyTorch-backend layout skips unmapped names:
it dumps every module).

**logits of a default engine build** are ``[batch, vocab]``: the last prompt token only
(TensorRT-LLM gathers the last token before ``lm_head`` unless the engine is built with
``gather_context_logits``). Such a dump offers no ``logits`` probe; the report says why.

**Tensor-parallel rule.** Each shard is first brought to the canonical rank by dropping
leading size-1 (batch) dims. Then: if every shard already has the canonical shape, the
tensor was all-reduced (TensorRT-LLM's RowLinear reduces inside, so ``attn_out``,
``mlp_out``, residuals and norms are replicated) and rank 0 is used -- unless the map says
``tp = "sum"`` (partial sums dumped before the all-reduce), then shards are summed.
Otherwise shards are concatenated, in rank order, along the axis that yields the canonical
shape: the heads axis for ``[T, heads, head_dim]`` probes (flat ``[T, heads/tp*head_dim]``
shards are concatenated along the last dim and reshaped), the last dim for column-parallel
outputs (``q/k/v``, ``logits`` without gather). Anything else is a shape error.

Pickles are never loaded: ``np.load(allow_pickle=False)``, ``torch.load(weights_only=True)``,
``.pkl``/``.pickle`` files refused.
"""
from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parity.capture import probes as canon
from parity.engines.dump_tllm import ENGINE_IO, PICKLES, DumpError, Found, first_line, load_array
from parity.errors import ParityError

DUMP_FORMAT = "parity-dump"
DUMP_VERSION = 1
MANIFEST, TENSORS, IDS = "manifest.json", "tensors.safetensors", "input_ids.json"
__all__ = ["DumpError", "ENGINE_IO", "PICKLES", "load_array", "Dump", "NameMap", "read_dump", "write_dump"]

# -- name maps ---------------------------------------------------------------------------------

@dataclass
class NameRule:
    pattern: re.Pattern[str]
    probe: str
    offset: int = 0
    tp: str | None = None


@dataclass
class NameMap:
    rules: list[NameRule] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)
    path: str | None = None

    def canonical(self, name: str) -> tuple[str | None, str | None]:
        """(canonical probe or None when ignored, tp rule). Raises DumpError for unknown names."""
        for r in self.rules:
            m = r.pattern.fullmatch(name)
            if m:
                i = m.groupdict().get("i")
                if i is not None and not (i.isascii() and i.isdigit() and len(i) < 7 and int(i) + r.offset >= 0):
                    raise DumpError(f"dumped tensor '{name}': the block group of pattern '{r.pattern.pattern}' "
                                    f"matched {i!r}, not a block number.", note="use (?P<i>\\d+) for the block index")
                probe = r.probe.replace("{i}", str(int(i) + r.offset)) if i is not None else r.probe
                canon.parse(probe)
                return probe, r.tp
        if any(fnmatch.fnmatchcase(name, g) for g in self.ignore):
            return None, None
        if canon.is_canonical(name):
            return name, None
        if any(fnmatch.fnmatchcase(name, g) for g in ENGINE_IO):
            return None, None
        raise DumpError(f"dumped tensor '{name}' is not a canonical probe name and the name map does not map it.",
                        note="map it in a --dump-map TOML ([[tensor]] pattern/probe) or list it under ignore")


def load_name_map(path: str | Path | None) -> NameMap:
    if path is None:
        return NameMap()
    from parity.validate import parse_toml, read_text

    p = Path(path)
    return name_map_from_dict(parse_toml(read_text(p, DumpError, "name map"), DumpError, f"name map {p}"), str(p))


def name_map_from_dict(raw: Any, where: str) -> NameMap:
    """A name map from its parsed TOML (checked by parity.engines.schema)."""
    from parity.engines.schema import check_name_map

    checked = check_name_map(raw, f"name map {where}")
    rules = [NameRule(re.compile(t.pattern), t.probe, t.offset, t.tp) for t in checked.tensor]
    return NameMap(rules, list(checked.ignore), where)


# -- reading files -----------------------------------------------------------------------------

@dataclass
class Dump:
    """Dumped tensors indexed by canonical name: per name, one loader per TP rank."""

    folder: Path
    layout: str
    shards: dict[str, list[Path | str]] = field(default_factory=dict)
    tp_rules: dict[str, str | None] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    ranks: int = 1
    notes: list[str] = field(default_factory=list)
    hint: str | None = None

    @property
    def probes(self) -> list[str]:
        return canon.in_order(self.shards)

    def raw(self, probe: str) -> list[Any]:
        if self.layout == "parity":
            return [_safetensor(self.folder / TENSORS, probe)]
        return [load_array(Path(p)) for p in self.shards[probe]]

    def tensor(self, probe: str, shape: list[int] | None) -> Any:
        shards = self.raw(probe)
        for t in shards:
            if not t.is_floating_point():  # complex, integer or bool activations: not a probe
                raise DumpError(f"dump {self.folder}: '{probe}' has dtype {str(t.dtype).removeprefix('torch.')}.",
                                note="probe tensors are real floating point (float32, float16, bfloat16)")
        try:
            return reassemble(probe, shards, shape, self.tp_rules.get(probe))
        except DumpError as exc:
            if self.hint:
                raise DumpError(exc.message, note=self.hint) from None
            raise

    def last_token_logits(self, tokens: int) -> bool:
        """True when the dumped logits hold one row (``[batch, vocab]`` of a default engine
        build: the last prompt token only) for a prompt of ``tokens`` > 1 tokens."""
        if "logits" not in self.shards or tokens <= 1 or self.layout == "parity":
            return False
        first = Path(self.shards["logits"][0])
        if first.suffix == ".npy":  # the header only: a [T, vocab] file of a 7B model is large
            import numpy as np

            shape = [d for d in np.load(first, mmap_mode="r", allow_pickle=False).shape]
        else:
            shape = list(self.raw("logits")[0].shape)
        while len(shape) > 2 and shape[0] == 1:
            shape = shape[1:]
        return len(shape) == 1 or (len(shape) == 2 and shape[0] == 1)

    @property
    def input_ids(self) -> list[int] | None:
        return self.meta.get("input_ids")


def _safetensor(path: Path, name: str) -> Any:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return fh.get_tensor(name)
    except Exception as exc:  # noqa: BLE001
        raise DumpError(f"cannot read '{name}' from {path}: {first_line(exc)[:160]}") from None


def detect(folder: str | Path) -> str:
    from parity.engines import dump_tllm

    f = Path(folder)
    if not f.is_dir():
        raise DumpError(f"dump folder '{f}' does not exist.")
    if (f / MANIFEST).is_file():
        return "parity"
    if f.name == "tllm_debug" or (f / "tllm_debug").is_dir() or any(f.glob("PP_*")):
        return "tllm-executor" if dump_tllm.is_executor(dump_tllm.tllm_root(f)) else "tllm"
    if any(f.glob("rank*")) or any((f / "data_dump").glob("rank*")):
        return "torch"
    raise DumpError(f"'{f}' is not a dump folder I know.",
                    note="expected manifest.json (parity dump), tllm_debug/PP_*/TP_*/*.npy, or rank<N>/*.pt")


def read_dump(folder: str | Path, name_map: NameMap | None = None) -> Dump:
    from parity.engines import dump_tllm

    layout = detect(folder)
    nm = name_map or NameMap()
    if layout == "parity":
        return _read_parity(Path(folder), nm)
    reader = {"tllm": dump_tllm.read_session, "tllm-executor": dump_tllm.read_executor, "torch": dump_tllm.read_torch}
    found: Found = reader[layout](Path(folder), nm)
    dump = Dump(Path(folder), layout, dict(found.shards), dict(found.tp_rules), dict(found.meta), found.ranks,
                list(found.notes), found.hint)
    ids_file = dump.meta.pop("input_ids_file", None)
    if ids_file is not None:
        dump.meta["input_ids"] = _ids(load_array(ids_file), ids_file)
    _check_nonempty(dump)
    return dump


def read_manifest(folder: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(manifest.json of a parity dump, its probes: name -> {shape, dtype}), checked."""
    from parity.engines.schema import check_manifest
    from parity.validate import read_json

    meta = read_json(folder / MANIFEST, DumpError, "dump manifest")
    if not isinstance(meta, dict) or meta.get("format") != DUMP_FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise DumpError(f"{folder / MANIFEST} is not a parity dump manifest (format {fmt!r}).",
                        note="a JSON object with format 'parity-dump', as `parity dump` writes it")
    checked = check_manifest(meta, f"dump manifest {folder / MANIFEST}")
    return meta, {k: v.model_dump(exclude_unset=True) for k, v in checked.probes.items()}


def _read_parity(folder: Path, nm: NameMap) -> Dump:
    meta, listed = read_manifest(folder)
    if not (folder / TENSORS).is_file():
        raise DumpError(f"dump {folder} has a manifest but no {TENSORS}.")
    from safetensors import safe_open

    try:
        with safe_open(str(folder / TENSORS), framework="pt") as fh:
            stored = {k: list(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except Exception as exc:  # noqa: BLE001
        raise DumpError(f"cannot read {folder / TENSORS}: {first_line(exc)[:160]} (truncated?)") from None
    dump = Dump(folder, "parity", meta=meta)
    for name in stored:
        probe, _ = nm.canonical(name)
        if probe is not None and probe != name:
            raise DumpError(f"{folder / TENSORS}: parity dumps store canonical names; found '{name}'.")
        if probe is not None:
            dump.shards[probe] = [name]
    missing = [p for p in listed if p not in stored]
    if missing:
        raise DumpError(f"dump {folder}: manifest lists {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                        + f" but {TENSORS} lacks it.")
    for p, info in listed.items():
        if list(info.get("shape", stored[p])) != stored[p]:
            raise DumpError(f"dump {folder}: '{p}' has shape {stored[p]} but the manifest says {info.get('shape')}.")
    return dump


def _ids(t: Any, path: Path) -> list[int]:
    """A dumped input_ids tensor as token ids (integers only: NaN, floats, bool refused)."""
    import torch

    from parity.loading.inputs import ids_from_array

    if t.dtype == torch.bfloat16:
        t = t.float()
    return ids_from_array(t.reshape(-1).numpy(), str(path))


def _check_nonempty(dump: Dump) -> None:
    if not dump.shards:
        torch = dump.layout == "torch"
        raise DumpError(f"dump {dump.folder} holds no tensor that maps to a canonical probe"
                        + (" (the PyTorch backend dumps every module; names it does not map are skipped)." if torch else "."),
                        note="give a --dump-map that maps the dumped names"
                             + (", e.g. pattern '1\\.Qwen2Model-(?P<i>\\d+)\\.Qwen2DecoderLayer-output\\.hidden_states\\.pt'"
                                if torch else ""))


# -- tensor-parallel reassembly --------------------------------------------------------------

def _squeeze_to(t: Any, rank: int) -> Any:
    while t.dim() > rank and t.shape[0] == 1:
        t = t[0]
    return t


def reassemble(probe: str, shards: list[Any], shape: list[int] | None, rule: str | None = None) -> Any:
    """One canonical tensor from per-rank shards (see the module docstring for the rule)."""
    import torch

    if shape is None:
        if len(shards) > 1 and rule != "sum":
            raise DumpError(f"'{probe}' has {len(shards)} tensor-parallel shards; reassembling them needs the model (--model).")
        return shards[0] if rule != "sum" else torch.stack([s.float() for s in shards]).sum(0).to(shards[0].dtype)
    rank = len(shape)
    parts = [_squeeze_to(s, rank) for s in shards]
    if all(list(p.shape) == shape for p in parts):
        if rule == "sum" and len(parts) > 1:
            return torch.stack([p.float() for p in parts]).sum(0).to(parts[0].dtype)
        return parts[0]
    if len(parts) > 1 and rule in (None, "concat"):
        for axis in range(rank - 1, 0, -1):
            same = all(p.dim() == rank and [d for j, d in enumerate(p.shape) if j != axis] ==
                       [d for j, d in enumerate(shape) if j != axis] for p in parts)
            if same and sum(p.shape[axis] for p in parts) == shape[axis]:
                return torch.cat(parts, dim=axis)
        if rank == 3 and all(p.dim() == 2 for p in parts):  # flat [T, heads/tp * head_dim]
            cat = torch.cat(parts, dim=-1)
            if cat.numel() == _numel(shape) and cat.shape[0] == shape[0]:
                return cat.reshape(shape)
    if len(parts) == 1 and parts[0].numel() == _numel(shape) and rank == 3 and parts[0].dim() == 2:
        return parts[0].reshape(shape)  # [T, heads*head_dim] -> [T, heads, head_dim]
    got = [list(p.shape) for p in parts]
    raise DumpError(f"dumped '{probe}' has shape {got[0] if len(got) == 1 else got} but the model's canonical shape is {shape}.",
                    note="check the model / token count, or the tp rule of its name map entry")


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def canonical_shape(point: str, cfg: Any, tokens: int) -> list[int]:
    """Canonical shape of a probe point (no batch) for ``tokens`` tokens of model ``cfg``."""
    h = getattr(cfg, "hidden_size", None)
    heads = getattr(cfg, "num_attention_heads", None)
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    hd = getattr(cfg, "head_dim", None) or (h // heads if h and heads else None)
    rot = getattr(cfg, "rotary_dim", None) or int((hd or 0) * (getattr(cfg, "rotary_pct", None) or getattr(cfg, "partial_rotary_factor", 1.0) or 1.0))
    vocab = getattr(cfg, "vocab_size", None)  # lm_head rows (Qwen v1 pads only the embedding)
    table = {"rope.cos": [tokens, rot], "rope.sin": [tokens, rot],
             "attn.q": [tokens, heads, hd], "attn.q_rot": [tokens, heads, hd],
             "attn.k": [tokens, kv, hd], "attn.k_rot": [tokens, kv, hd], "attn.v": [tokens, kv, hd],
             "logits": [tokens, vocab]}
    return list(table.get(point, [tokens, h]))


# -- writing -----------------------------------------------------------------------------------

def write_dump(out: str | Path, tensors: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write a parity dump (safetensors + manifest + input ids), each file atomically."""
    from safetensors.torch import save_file

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    names = canon.in_order(tensors)
    clean = {n: tensors[n].detach().to("cpu").contiguous() for n in names}
    manifest = {"format": DUMP_FORMAT, "version": DUMP_VERSION, **meta,
                "probes": {n: {"shape": list(clean[n].shape), "dtype": str(clean[n].dtype).removeprefix("torch.")} for n in names}}
    tmps = [folder / f".{name}.tmp" for name in (TENSORS, MANIFEST, IDS)]
    try:  # the manifest last: a reader finds a manifest only beside complete tensors
        save_file(clean, str(tmps[0]), metadata={"format": DUMP_FORMAT})
        tmps[2].write_text(json.dumps(meta.get("input_ids") or []))
        tmps[1].write_text(json.dumps(manifest, indent=1))
        for t, name in ((tmps[0], TENSORS), (tmps[2], IDS), (tmps[1], MANIFEST)):
            t.replace(folder / name)
    finally:  # an error, Ctrl-C or SIGTERM (parity.outputs.Terminated) leaves no temp file
        for t in tmps:
            t.unlink(missing_ok=True)
    return folder


def check_ids(dump: Dump, ids: list[int]) -> None:
    if dump.input_ids is not None and list(dump.input_ids) != list(ids):
        if dump.meta.get("unstepped") and dump.hint:
            note = dump.hint
        elif dump.layout == "parity":
            note = f"run with --input-ids {dump.folder / IDS}"
        else:
            note = "give the same --input-ids the engine ran"
        raise ParityError(f"the dump in {dump.folder} was made from other input ids ({len(dump.input_ids)} tokens) "
                          f"than this run's ({len(ids)} tokens).", note=note)

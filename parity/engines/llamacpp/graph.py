"""llama.cpp's computation graph as probes: the eval callback, ggml tensors read through ctypes,
and the probe map (``probes/llamacpp.toml``) that says which graph node is which canonical probe.

llama.cpp's scheduler calls ``cb_eval(tensor, ask, user_data)`` for each graph node twice:
with ``ask=True`` (return True to see this node's data) and, once the node is computed, with
``ask=False``. Node names are set by llama.cpp's model builders (``attn_norm-3``, ``Qcur-3``,
``ffn_out-3``, ``result_output`` ...); several nodes may share one name (``Qcur-3`` names the
q projection, its bias add, its reshape to heads and the rotary output), so a map entry can
pick by the node's operation (``op`` / ``op_not``, ggml's op names such as ``ROPE``) and
take the last match (``pick = "last"``). A node without a name is found by the weight it
multiplies (``weight = "blk.{i}.attn_output.weight"``: the ``MUL_MAT`` whose first source
is that tensor). Data is copied out with ``ggml_backend_tensor_get`` (the tensor may live
in a non-host buffer) and laid out with the tensor's own strides: ggml's ``ne[0]`` is the
fastest dimension, so ``[n_embd, n_tokens]`` arrives as ``[T, H]`` and
``[head_dim, heads, n_tokens]`` as ``[T, heads, head_dim]``.

Transforms: ``rope_pairs`` undoes the converter's q/k row permutation for architectures
whose rotary rotates adjacent pairs (llama.cpp's "norm" rope: ``llama``), so that q, k and
their rotary outputs compare with Hugging Face's rotate-half layout; for "neox"
architectures (``qwen2``) it is the identity.
"""
from __future__ import annotations

import ctypes
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from parity.capture import probes as canon
from parity.errors import ProbeError
from parity.resources import find_file, search_dirs

GGML_MAX_DIMS, GGML_MAX_SRC, GGML_MAX_OP_PARAMS, GGML_MAX_NAME = 4, 10, 64, 64
#: ggml_type values read here (ggml.h) -> numpy dtype
GGML_TYPES = {0: np.float32, 1: np.float16, 26: np.int32}
GGML_BF16 = 30
_KEYS = {"node", "op", "op_not", "pick", "weight", "transform"}
TRANSFORMS = ("rope_pairs",)


class GgmlTensor(ctypes.Structure):
    """The leading fields of ``struct ggml_tensor`` (ggml.h), up to ``name``."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * GGML_MAX_NAME),
    ]


class Ggml:
    """The few ggml functions used here, from the library llama-cpp-python loaded."""

    def __init__(self) -> None:
        from llama_cpp import _ggml

        lib = _ggml.libggml
        self.tensor_get = lib.ggml_backend_tensor_get
        self.tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
        self.tensor_get.restype = None
        self.nbytes = lib.ggml_nbytes
        self.nbytes.argtypes = [ctypes.c_void_p]
        self.nbytes.restype = ctypes.c_size_t
        op_name = lib.ggml_op_name
        op_name.argtypes = [ctypes.c_int]
        op_name.restype = ctypes.c_char_p
        self._op_name = op_name
        self._ops: dict[int, str] = {}

    def op(self, code: int) -> str:
        if code not in self._ops:
            self._ops[code] = (self._op_name(code) or b"?").decode()
        return self._ops[code]

    @staticmethod
    def tensor(ptr: int) -> GgmlTensor:
        return GgmlTensor.from_address(ptr)

    @staticmethod
    def name_at(ptr: int | None) -> str:
        return GgmlTensor.from_address(ptr).name.decode("utf-8", "replace") if ptr else ""

    def read(self, ptr: int) -> torch.Tensor:
        """The node's values as a float32 tensor, dims in reverse ggml order (ne[0] last)."""
        t = GgmlTensor.from_address(ptr)
        if t.type not in GGML_TYPES and t.type != GGML_BF16:
            raise ProbeError(f"graph node '{t.name.decode()}' has ggml type {t.type}, which parity does not read.")
        n = int(self.nbytes(ptr))
        buf = (ctypes.c_uint8 * n)()
        self.tensor_get(ptr, buf, 0, n)
        raw = np.frombuffer(buf, dtype=np.uint8)
        dims = max(1, max((d + 1 for d in range(GGML_MAX_DIMS) if t.ne[d] > 1), default=1))
        shape = tuple(int(t.ne[d]) for d in reversed(range(dims)))
        strides = tuple(int(t.nb[d]) for d in reversed(range(dims)))
        if t.type == GGML_BF16:
            u16 = np.lib.stride_tricks.as_strided(raw.view(np.uint16), shape, strides)
            arr = (np.ascontiguousarray(u16).astype(np.uint32) << 16).view(np.float32)
        else:
            base = raw.view(GGML_TYPES[t.type])
            arr = np.lib.stride_tricks.as_strided(base, shape, strides).astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(arr))


# -- the probe map ------------------------------------------------------------------------------

@dataclass(frozen=True)
class NodeSpec:
    node: str | None = None
    op: str | None = None
    op_not: str | None = None
    pick: str = "first"
    weight: str | None = None
    transform: str | None = None

    def concrete(self, block: int | None) -> NodeSpec:
        def sub(s: str | None) -> str | None:
            return s if s is None or block is None else s.replace("{i}", str(block))

        return NodeSpec(sub(self.node), self.op, self.op_not, self.pick, sub(self.weight), self.transform)

    def matches(self, name: str, op: str, weight: str | None) -> bool:
        if self.weight is not None:
            return op == "MUL_MAT" and weight == self.weight
        return name == self.node and (self.op is None or op == self.op) and (self.op_not is None or op != self.op_not)


@dataclass
class GraphMap:
    path: Path
    entries: dict[str, NodeSpec]
    not_exposed: dict[str, str]
    rope_norm: tuple[str, ...] = ()
    architecture: str | None = None

    def names(self, num_blocks: int) -> list[str]:
        out = [n for n in self.entries if "{i}" not in n]
        for pattern in (n for n in self.entries if "{i}" in n):
            out.extend(pattern.replace("{i}", str(i)) for i in range(num_blocks))
        return canon.in_order(out)

    def spec(self, probe: str) -> NodeSpec:
        p = canon.parse(probe)
        key = probe if p.block is None else f"blocks.{{i}}.{p.point}"
        return self.entries[key].concrete(p.block)

    def why_not(self, probe: str) -> str:
        p = canon.parse(probe)
        key = probe if p.block is None else f"blocks.{{i}}.{p.point}"
        return self.not_exposed.get(key, "no graph node of llama.cpp is mapped to it (probes/llamacpp.toml)")


def load_graph_map(name: str = "llamacpp", extra_dirs: list[str] | None = None) -> GraphMap:
    as_path = Path(name)
    path = as_path if as_path.suffix == ".toml" and as_path.is_file() else find_file("probes", f"{name}.toml", extra_dirs or [])
    if path is None:
        raise ProbeError(f"no probe map named '{name}'.", note="searched " + ", ".join(map(str, search_dirs("probes", extra_dirs or []))))
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ProbeError(f"cannot read probe map {path}: {exc}") from None
    entries: dict[str, NodeSpec] = {}
    for key, spec in (raw.get("probes") or {}).items():
        canon.parse(key.replace("{i}", "0"))
        if not isinstance(spec, dict) or set(spec) - _KEYS or not (spec.get("node") or spec.get("weight")):
            raise ProbeError(f"{path}: probe '{key}' needs 'node' or 'weight'.", note="valid keys: " + ", ".join(sorted(_KEYS)))
        if spec.get("transform") not in (None, *TRANSFORMS):
            raise ProbeError(f"{path}: probe '{key}' uses unknown transform {spec['transform']!r}.", note="known: " + ", ".join(TRANSFORMS))
        if spec.get("pick", "first") not in ("first", "last"):
            raise ProbeError(f"{path}: probe '{key}': pick is 'first' or 'last'.")
        entries[key] = NodeSpec(**spec)
    if not entries:
        raise ProbeError(f"{path}: no [probes] table.")
    rope = raw.get("rope") or {}
    return GraphMap(path, entries, dict(raw.get("not_exposed") or {}), tuple(rope.get("norm", ())), raw.get("architecture"))


def rope_pairs(t: torch.Tensor, heads: int) -> torch.Tensor:
    """``[T, heads, hd]`` (or ``[T, heads*hd]``) with each head's adjacent pairs
    (x0, x_{hd/2}, x1, x_{hd/2+1}, ...) put back into halves (the inverse of the converter's
    q/k permutation)."""
    shape = t.shape
    x = t.reshape(shape[0], heads, -1)
    hd = x.shape[-1]
    x = x.reshape(shape[0], heads, hd // 2, 2).transpose(-1, -2).reshape(shape[0], heads, hd)
    return x.reshape(shape)


# -- collecting probes during one decode ---------------------------------------------------------

@dataclass
class Collector:
    """Matches graph nodes to requested probes while llama.cpp evaluates its graph."""

    ggml: Ggml
    gmap: GraphMap
    probes: list[str]
    shapes: dict[str, list[int]]
    heads: dict[str, int]
    rope_norm: bool
    sink: Any = None
    specs: dict[str, NodeSpec] = field(default_factory=dict)
    by_name: dict[str, list[str]] = field(default_factory=dict)
    by_weight: dict[str, list[str]] = field(default_factory=dict)
    pending: dict[str, torch.Tensor] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    error: BaseException | None = None
    block: int | None = None

    def __post_init__(self) -> None:
        for p in self.probes:
            s = self.gmap.spec(p)
            self.specs[p] = s
            if s.weight is not None:
                self.by_weight.setdefault(s.weight, []).append(p)
            else:
                self.by_name.setdefault(s.node or "", []).append(p)

    def _weight_of(self, t: GgmlTensor) -> str | None:
        return Ggml.name_at(t.src[0]) if self.by_weight else None

    def ask(self, ptr: int) -> bool:
        t = GgmlTensor.from_address(ptr)
        name = t.name.decode("utf-8", "replace")
        if name in self.by_name:
            return True
        return bool(self.by_weight) and self.ggml.op(t.op) == "MUL_MAT" and self._weight_of(t) in self.by_weight

    def take(self, ptr: int) -> None:
        t = GgmlTensor.from_address(ptr)
        name, op = t.name.decode("utf-8", "replace"), self.ggml.op(t.op)
        weight = self._weight_of(t) if op == "MUL_MAT" else None
        hits = [p for p in self.by_name.get(name, []) + self.by_weight.get(weight or "", [])
                if p not in self.done and self.specs[p].matches(name, op, weight)]
        if not hits:
            return
        value = self.ggml.read(ptr)
        for p in hits:
            block = canon.parse(p).block
            if block != self.block:
                self.flush()
                self.block = block
            if self.specs[p].pick == "last":
                self.pending[p] = value
            else:
                self.emit(p, value)

    def emit(self, probe: str, value: torch.Tensor) -> None:
        self.done.add(probe)
        self.pending.pop(probe, None)
        self.sink(probe, self.canonical(probe, value))

    def flush(self) -> None:
        for p in list(self.pending):
            self.emit(p, self.pending[p])

    def canonical(self, probe: str, value: torch.Tensor) -> torch.Tensor:
        shape = self.shapes[probe]
        if list(value.shape) != shape:
            if value.numel() != int(np.prod(shape)):
                raise ProbeError(f"llama.cpp node for '{probe}' has shape {list(value.shape)}, the probe's is {shape}.",
                                 note="do the GGUF file and the reference model agree (tokens, heads, vocab)?")
            value = value.reshape(shape)
        if self.specs[probe].transform == "rope_pairs" and self.rope_norm:
            value = rope_pairs(value, self.heads[probe])
        return value

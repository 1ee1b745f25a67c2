"""A GGUF file's header read and checked by parity itself, with every count and size bounded
by the file's own length, before the ``gguf`` package or transformers sees the file.

The layout (ggml's ``docs/gguf.md`` @ ggml-org/ggml master): magic ``GGUF``, a uint32
version (1: 32-bit counts, 2 and 3: 64-bit), the tensor count, the key/value count, the
key/value pairs (a string key, a uint32 type, the value; arrays carry an element type and a
count), then per tensor its name, dimension count, dimensions (innermost first), ggml type and
data offset, and the tensor data from the next multiple of ``general.alignment`` (32).

Nothing here allocates more than the file holds: a count larger than the bytes left is refused
before any loop runs, so a 1 KB file cannot make parity allocate gigabytes. Only scalars and
strings up to :data:`KEEP_STRING` bytes are kept; arrays are kept as their length.

:func:`check_model` then holds the metadata of a llama or qwen2 model against the tensors the
file has: every block's tensors present with the shapes the sizes give, no tensor beyond the
block count, names that are plain identifiers -- a file parity cannot read completely is refused,
never converted with missing weights initialized at random.
"""
from __future__ import annotations

import mmap
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parity.errors import CheckpointError

#: ggml type id -> (elements per block, bytes per block), as gguf-py's GGML_QUANT_SIZES
#: (gguf-py/gguf/constants.py @ ggml-org/llama.cpp b4000+)
GGML_TYPES: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 40),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82),
    23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2),
    34: (256, 54), 35: (256, 66), 39: (32, 17),
}
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9
KEEP_STRING = 1 << 16
MAX_DIMS = 4
MAX_ARRAY_DEPTH = 2
NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
NOTE = "the file is damaged or not a model parity can read: download it again, or convert it with llama.cpp's converter"


@dataclass
class Tensor:
    name: str
    dims: tuple[int, ...]  # innermost first, as GGUF stores them
    ggml_type: int
    offset: int  # from the start of the data section

    @property
    def elements(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        block, size = GGML_TYPES[self.ggml_type]
        return self.elements // block * size


@dataclass
class Header:
    path: Path
    version: int
    fields: dict[str, Any] = field(default_factory=dict)  # scalars, strings; arrays as their length
    tensors: dict[str, Tensor] = field(default_factory=dict)
    data_start: int = 0

    def int_field(self, key: str) -> int | None:
        v = self.fields.get(key)
        return v if isinstance(v, int) and not isinstance(v, bool) else None


class _Cursor:
    def __init__(self, path: Path, blob: Any, endian: str) -> None:
        self.path, self.blob, self.pos, self.end = path, blob, 0, endian

    def fail(self, what: str) -> CheckpointError:
        return CheckpointError(f"GGUF file '{self.path}' is malformed: {what} (at byte {self.pos}).", note=NOTE)

    def left(self) -> int:
        return len(self.blob) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or n > self.left():
            raise self.fail(f"{what} needs {n} bytes, {self.left()} are left")
        b = self.blob[self.pos:self.pos + n]
        self.pos += n
        return b

    def scalar(self, code: str, what: str) -> Any:
        return struct.unpack(self.end + code, self.take(struct.calcsize(code), what))[0]

    def count(self, wide: bool, what: str, each: int) -> int:
        n = self.scalar("Q" if wide else "I", what)
        if n * each > self.left():
            raise self.fail(f"{what} is {n}, more than the {self.left()} bytes left can hold")
        return int(n)

    def string(self, wide: bool, what: str) -> str:
        n = self.count(wide, f"the length of {what}", 1)
        raw = self.take(n, what)
        return raw[:KEEP_STRING].decode("utf-8", errors="replace")


def _value(cur: _Cursor, wide: bool, vtype: int, key: str, depth: int = 0) -> Any:
    if vtype in _SCALARS:
        return cur.scalar(_SCALARS[vtype], f"the value of '{key}'")
    if vtype == STRING:
        return cur.string(wide, f"the value of '{key}'")
    if vtype != ARRAY:
        raise cur.fail(f"key '{key}' has value type {vtype}, which GGUF does not define")
    if depth >= MAX_ARRAY_DEPTH:
        raise cur.fail(f"key '{key}' nests arrays more than {MAX_ARRAY_DEPTH} deep")
    etype = cur.scalar("I", f"the element type of '{key}'")
    if etype in _SCALARS:
        size = struct.calcsize(_SCALARS[etype])
        n = cur.count(wide, f"the length of '{key}'", size)
        cur.take(n * size, f"the elements of '{key}'")
        return n
    n = cur.count(wide, f"the length of '{key}'", 8 if etype == STRING else 12)
    for _ in range(n):
        _value(cur, wide, etype, key, depth + 1)
    return n


def _known_to_gguf_py(gtype: int) -> tuple[int, int] | None:
    """(block, bytes) of a ggml type newer than GGML_TYPES, from the gguf package when installed."""
    try:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        return tuple(GGML_QUANT_SIZES[GGMLQuantizationType(gtype)])  # type: ignore[return-value]
    except Exception:  # noqa: BLE001 - not installed, or a type it does not know either
        return None


def read_header(path: Path) -> Header:
    """The header of GGUF file ``path``, checked for internal consistency (counts, sizes, names,
    every tensor inside the file)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        if size < 8 or f.read(4) != b"GGUF":
            raise CheckpointError(f"'{path}' is not a GGUF file (it does not start with 'GGUF').",
                                  note="--checkpoint takes a Hugging Face folder or a .gguf file; --gguf a .gguf file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as blob:  # pages read as the header is walked
            return _parse(path, blob, size)


def _parse(path: Path, blob: Any, size: int) -> Header:
    if blob[:4] != b"GGUF":
        raise CheckpointError(f"'{path}' is not a GGUF file (it does not start with 'GGUF').",
                              note="--checkpoint takes a Hugging Face folder or a .gguf file; --gguf a .gguf file")
    endian = "<"
    if len(blob) >= 8 and struct.unpack("<I", blob[4:8])[0] & 0xFFFF == 0:
        endian = ">"
    cur = _Cursor(path, blob, endian)
    cur.take(4, "the magic")
    version = cur.scalar("I", "the version")
    if version not in (1, 2, 3):
        raise CheckpointError(f"GGUF file '{path}' has version {version}; parity reads versions 1 to 3.", note=NOTE)
    wide = version >= 2
    # a tensor record takes at least 8 + 1 + 4 + 8 + 4 + 8 bytes, a key/value pair 8 + 1 + 4 + 1
    n_tensors = cur.count(wide, "the tensor count", 33)
    n_kv = cur.count(wide, "the key/value count", 14)
    head = Header(path, version)
    for _ in range(n_kv):
        key = cur.string(wide, "a key")
        vtype = cur.scalar("I", f"the type of '{key}'")
        head.fields[key] = _value(cur, wide, vtype, key)
    for _ in range(n_tensors):
        name = cur.string(wide, "a tensor name")
        if not NAME.fullmatch(name):
            raise cur.fail(f"tensor name {name[:80]!r} is not a plain dotted name")
        if name in head.tensors:
            raise cur.fail(f"tensor '{name}' appears twice")
        nd = cur.scalar("I", f"the dimension count of '{name}'")
        if not 1 <= nd <= MAX_DIMS:
            raise cur.fail(f"tensor '{name}' has {nd} dimensions (1 to {MAX_DIMS})")
        dims = tuple(int(cur.scalar("Q" if wide else "I", f"a dimension of '{name}'")) for _ in range(nd))
        gtype = cur.scalar("I", f"the type of '{name}'")
        offset = int(cur.scalar("Q", f"the offset of '{name}'"))
        t = Tensor(name, dims, gtype, offset)
        if gtype not in GGML_TYPES and _known_to_gguf_py(gtype):
            GGML_TYPES[gtype] = _known_to_gguf_py(gtype)  # type: ignore[assignment]
        if gtype not in GGML_TYPES:
            raise cur.fail(f"tensor '{name}' has ggml type {gtype}, which parity does not know")
        if any(d < 1 for d in dims) or t.elements > size * 256:
            raise cur.fail(f"tensor '{name}' has dimensions {list(dims)}, more than the file can hold")
        if dims[0] % GGML_TYPES[gtype][0]:
            raise cur.fail(f"tensor '{name}': its first dimension {dims[0]} is not a multiple of its type's block size")
        head.tensors[name] = t
    align = head.int_field("general.alignment")
    align = 32 if align is None and "general.alignment" not in head.fields else align
    if not isinstance(align, int) or not 1 <= align <= 1 << 16 or align & (align - 1):
        raise cur.fail(f"general.alignment {align} is not a power of two up to 65536")
    head.data_start = -(-cur.pos // align) * align
    for t in head.tensors.values():
        end = head.data_start + t.offset + t.nbytes
        if end > size:
            raise CheckpointError(f"GGUF file '{path}' is truncated: tensor '{t.name}' needs {end} bytes, the file has {size}.",
                                  note="download it again")
    return head


# -- a llama / qwen2 model: metadata against the tensors present ------------------------------------

BLOCK_TENSORS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")
MAX_BLOCKS = 4096
_BLK = re.compile(r"blk\.(\d+)\.(.+)")


def check_model(head: Header, arch: str) -> None:
    """The sizes of a ``llama`` / ``qwen2`` GGUF model against its tensors: a file transformers
    would complete with randomly initialized weights is refused here."""
    def fail(what: str, note: str = NOTE) -> CheckpointError:
        return CheckpointError(f"GGUF file '{head.path}': {what}.", note=note)

    def positive(key: str, required: bool = True) -> int | None:
        v = head.int_field(f"{arch}.{key}")
        if v is None and not required:
            return None
        if v is None or not 1 <= v <= 1 << 24:
            raise fail(f"{arch}.{key} is {head.fields.get(f'{arch}.{key}')!r}; need a whole number from 1 to {1 << 24}")
        return v

    if not head.tensors:
        raise fail("it holds no tensors (metadata only)")
    blocks = positive("block_count")
    assert blocks is not None
    if blocks > MAX_BLOCKS:
        raise fail(f"{arch}.block_count is {blocks}; parity reads models of at most {MAX_BLOCKS} blocks")
    hidden, heads = positive("embedding_length"), positive("attention.head_count")
    ffn = positive("feed_forward_length")
    kv = positive("attention.head_count_kv", required=False) or heads
    assert hidden is not None and heads is not None and ffn is not None
    if hidden % heads:
        raise fail(f"{arch}.attention.head_count {heads} does not divide {arch}.embedding_length {hidden}")
    if heads % kv:
        raise fail(f"{arch}.attention.head_count_kv {kv} does not divide {arch}.attention.head_count {heads}")
    hd = hidden // heads
    emb = head.tensors.get("token_embd.weight")
    if emb is None or len(emb.dims) != 2 or emb.dims[0] != hidden:
        raise fail("token_embd.weight is missing or not [vocab, embedding_length]" if emb is None else
                   f"token_embd.weight has dimensions {list(emb.dims)}; embedding_length is {hidden}")
    shapes = {"attn_norm": (hidden,), "ffn_norm": (hidden,), "attn_q": (hidden, hidden), "attn_k": (hidden, kv * hd),
              "attn_v": (hidden, kv * hd), "attn_output": (hidden, hidden), "ffn_gate": (hidden, ffn),
              "ffn_up": (hidden, ffn), "ffn_down": (ffn, hidden)}
    _check_present(head, fail, "output_norm.weight", (hidden,))
    for i in range(blocks):
        for part in BLOCK_TENSORS:
            _check_present(head, fail, f"blk.{i}.{part}.weight", shapes[part], blocks)
    for name in head.tensors:
        m = _BLK.fullmatch(name)
        if m and int(m.group(1)) >= blocks:
            raise fail(f"tensor '{name}' lies beyond {arch}.block_count {blocks}")
    out = head.tensors.get("output.weight")
    if out is not None and (len(out.dims) != 2 or out.dims[0] != hidden):
        raise fail(f"output.weight has dimensions {list(out.dims)}; embedding_length is {hidden}")


def _check_present(head: Header, fail: Any, name: str, dims: tuple[int, ...], blocks: int | None = None) -> None:
    t = head.tensors.get(name)
    if t is None:
        where = f" ({blocks} blocks by block_count, {len(head.tensors)} tensors in the file)" if blocks else ""
        raise fail(f"tensor '{name}' is missing{where}",
                   "parity compares only checkpoints it can read completely: convert the model again")
    if t.dims != dims:
        raise fail(f"tensor '{name}' has dimensions {list(t.dims)}; the metadata gives {list(dims)}")


def float32_bytes(head: Header) -> int:
    """What the dequantized (float32) weights take."""
    return sum(4 * t.elements for t in head.tensors.values())

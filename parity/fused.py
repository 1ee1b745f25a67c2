"""Fused on-device statistics (Triton): one kernel launch per probe, finalized per batch.

The eager path in :mod:`parity.diff` builds each statistic with its own torch op (about a
hundred small kernels per probe). Here one Triton kernel reads the candidate and the
reference once and writes a 16-slot float64 record per (row, column tile); a second kernel,
launched once per batch of probes, folds each probe's records into the same 21-slot vector
the eager path produces (``parity.diff.S_*``). Nothing is copied: rows are read in place
with their stride, so a view into a fused QKV buffer costs no ``.contiguous()``.

Elementwise terms are float32 (exact for the differences that matter: ref - cand is exact
whenever the two are within a factor 2); products and sums are float64 (a product of two
float32 values is exact there, and cosine and the per-token scale fit subtract nearly equal
sums); the worst element is re-read and its error recomputed in float64. Against the float64 eager path: counts and the worst index
agree exactly except for elements within ~1e-7 of a tolerance boundary; other statistics to
about 1e-7 relative.

Used for CUDA tensors when Triton imports; ``PARITY_FUSED_STATS=0`` turns it off. With
``TRITON_INTERPRET=1`` the kernels also run on CPU tensors (the tests use that).
"""
from __future__ import annotations

import os
from typing import Any

import torch

_KERNELS: Any = None  # parity._fused_kernels once imported; False when Triton is unusable

REC = 16  # slots per record; the first 16 slots of parity.diff's vector, see _finalize_kernel
OUT = 21  # slots of the finished vector (parity.diff.S_*)
BLOCK = 256
SMALL_BLOCK = 128
PROGRAMS = 1024  # split rows into column tiles until about this many programs run
ARENA_RECORDS = 1 << 16


def _load() -> Any:
    global _KERNELS
    if _KERNELS is None:
        try:  # Triton ships with CUDA builds of torch
            from parity import _fused_kernels
            _KERNELS = _fused_kernels
        except Exception:  # noqa: BLE001 - any import problem means "use the eager path"
            _KERNELS = False
    return _KERNELS


def allowed() -> bool:
    """PARITY_FUSED_STATS=0 turns the fused kernels off (read per batch, not per probe)."""
    return os.environ.get("PARITY_FUSED_STATS", "1") != "0"


def enabled(t: torch.Tensor, allow: bool | None = None) -> bool:
    """Whether the fused kernels handle tensors on ``t``'s device (imports Triton once)."""
    if not (t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        return False
    if t.dtype == torch.float64:  # elementwise terms are float32: float64 inputs take the eager path
        return False
    if not (allowed() if allow is None else allow):
        return False
    return _load() is not False


def _kernels() -> Any:
    if not _load():
        raise RuntimeError("parity.fused needs Triton (and a CUDA device, or TRITON_INTERPRET=1)")
    return _KERNELS


_GEOMETRY: dict[tuple[Any, Any], tuple[bool, int, int, int, int, int, int]] = {}


def _geometry(shape: Any, strides: Any) -> tuple[bool, int, int, int, int, int, int]:
    """(copy first, rows, row length, row stride, block, tiles per row, tile width) of a
    tensor: dim 0 is the row (a 0-/1-D tensor is one row); a tensor whose rows are not
    contiguous in memory is copied first (and then has contiguous rows)."""
    numel = 1
    for size in shape:
        numel *= size
    if len(shape) < 2:
        copy = len(shape) == 1 and shape[0] > 1 and strides[0] != 1
        rows, length, row_stride = 1, numel, 0
    else:
        expect, copy = 1, False
        for size, stride in zip(reversed(shape[1:]), reversed(strides[1:])):
            if size != 1 and stride != expect:
                copy = True
            expect *= size
        rows = shape[0]
        length = numel // rows if rows else 0
        row_stride = length if copy else strides[0]
    block = BLOCK if length > SMALL_BLOCK else SMALL_BLOCK
    tiles, width = _tiles(rows, length, block)
    return copy, rows, length, row_stride, block, tiles, width


def _rows(t: torch.Tensor) -> tuple[torch.Tensor, tuple[bool, int, int, int, int, int, int]]:
    """The tensor to read (copied only when its rows are not contiguous) and its geometry;
    geometries are cached by shape and strides, which repeat from block to block."""
    key = (t.shape, t.stride())
    g = _GEOMETRY.get(key)
    if g is None:
        g = _GEOMETRY[key] = _geometry(tuple(t.shape), t.stride())
    return (t.contiguous() if g[0] else t), g


def _tiles(rows: int, length: int, block: int) -> tuple[int, int]:
    """(tiles per row, tile width): enough programs to fill the GPU on short, wide tensors."""
    blocks = -(-length // block)
    want = max(1, min(blocks, -(-PROGRAMS // max(1, rows))))
    width = -(-blocks // want) * block
    return -(-length // width), width


class Arena:
    """Records of the probes of one batch on one device, and how to finish them."""

    def __init__(self, device: torch.device) -> None:
        self.kernels = _kernels()
        self.device = device
        self.blocks: list[list[Any]] = []  # [buffer, used records, entries]

    def _reserve(self, n: int) -> tuple[list[Any], int]:
        if not self.blocks or self.blocks[-1][1] + n > self.blocks[-1][0].shape[0]:
            size = max(n, ARENA_RECORDS)
            self.blocks.append([torch.empty(size, REC, dtype=torch.float64, device=self.device), 0, []])
        block = self.blocks[-1]
        first = block[1]
        block[1] += n
        return block, first

    def add(self, cand: torch.Tensor, ref: torch.Tensor | None, tol: torch.Tensor, on_done: Any) -> None:
        """Launch the row kernel for one probe (``tol``: float64 [atol, rtol, eps] on the
        device; Triton would pass Python floats as float32 and move the tolerance boundary);
        ``on_done(vector)`` receives its 21-slot device vector when the arena is finished."""
        c, (_, rows, length, c_stride, block_w, tiles, width) = _rows(cand)
        if ref is not None:
            r, (_, _, _, r_stride, _, _, _) = _rows(ref)
        else:
            r, r_stride = c, c_stride
        buf, first = self._reserve(rows * tiles)
        self.kernels._rows_kernel[(rows, tiles)](r, c, buf[0], tol, first, length,
                                                 width, r_stride, c_stride, HAS_REF=ref is not None, BLOCK=block_w)
        buf[2].append((first, rows, tiles, length, on_done))

    def finish(self) -> None:
        """Fold every probe's records (one launch per arena block) and hand out the vectors."""
        blocks, self.blocks = self.blocks, []
        for buf, _, entries in blocks:
            desc = torch.tensor([e[:4] for e in entries], dtype=torch.int64).to(self.device)
            out = torch.empty(len(entries), OUT, dtype=torch.float64, device=self.device)
            self.kernels._finalize_kernel[(len(entries),)](buf, desc, out, RB=128)
            for i, e in enumerate(entries):
                e[4](out[i])

"""Fused on-device statistics (Triton), finalized per batch.

The eager path in :mod:`parity.compare.diff` builds each statistic with its own torch op (about a
hundred small kernels per probe). Here one Triton kernel reads the candidate and the
reference once and writes a 16-slot float64 record per (row, column tile); a second kernel,
launched once per batch of probes, folds each probe's records into the same 21-slot vector
the eager path produces (``parity.compare.diff.S_*``). Nothing is copied: rows are read in place
with their stride, so a view into a fused QKV buffer costs no ``.contiguous()``.

Inside :func:`deferred` probes are queued and launched together: one kernel per dtype pair
reads a table of probe descriptors (see ``Arena.add``). A sequence of planned probes that
repeats from forward to forward is queued as a :class:`Run`, whose table stays on the
device (``Arena.add_run``). Outside, each probe is launched at once with its geometry as
arguments (``Arena.launch``); that is the path for code that may write a captured tensor
in place after its hook.

Elementwise terms are float32 (exact for the differences that matter: ref - cand is exact
whenever the two are within a factor 2); products are float64 (a product of two float32
values is exact there, and cosine and the per-token scale fit subtract nearly equal sums)
and so are the sums, except the candidate's own sum and the error sum, which add a few
float32 steps first; the worst element is re-read and its error recomputed in float64.
A tile is read first on the assumption that every value is finite, and read again with
NaN/Inf accounting only when that fails. Against the float64 eager path: counts and the
worst index agree exactly except for elements within ~1e-7 of a tolerance boundary; other
statistics to about 1e-7 relative.

Used for CUDA tensors when Triton imports; ``PARITY_FUSED_STATS=0`` turns it off. With
``TRITON_INTERPRET=1`` the kernels also run on CPU tensors (the tests use that).
"""
from __future__ import annotations

import os
import struct
from array import array
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

_KERNELS: Any = None  # parity.compare.kernels once imported; False when Triton is unusable

REC = 16  # slots per record; the first 16 slots of parity.compare.diff's vector, see _finalize_kernel
OUT = 21  # slots of the finished vector (parity.compare.diff.S_*)
NDESC = 11  # int64 columns of a probe's descriptor (parity.compare.kernels._rows_kernel)
# Queued probes (one launch for many; tuned on an H200 with benchmarks/gpu_micro.py --tune):
BLOCK = 128  # columns per step of a program: 4 per thread, so 16-byte loads of a float32 row
WARPS = 1
STAGES = 3  # steps in flight per program (Triton's software pipelining of the row loop)
QUEUED_PROGRAMS = 64  # split rows into column tiles until a probe has about this many programs
CHUNK = 4  # steps of a row whose candidate and error sums add in float32 before float64
# A probe launched on its own has the GPU to itself:
ONE_BLOCK = 256
ONE_WARPS = 2
PROGRAMS = 1024
ARENA_RECORDS = 1 << 16


def _load() -> Any:
    global _KERNELS
    if _KERNELS is None:
        try:  # Triton ships with CUDA builds of torch
            from parity.compare import kernels as _fused_kernels
            _KERNELS = _fused_kernels
        except Exception:  # noqa: BLE001 - any import problem means "use the eager path"
            _KERNELS = False
    return _KERNELS


def allowed() -> bool:
    """PARITY_FUSED_STATS=0 turns the fused kernels off (read per batch, not per probe)."""
    return os.environ.get("PARITY_FUSED_STATS", "1") != "0"


_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # Triton reads it once too


def usable(t: torch.Tensor) -> bool:
    """Whether the fused kernels handle ``t`` (imports Triton once): a CUDA tensor (any
    tensor under TRITON_INTERPRET=1) that is not float64 (elementwise terms are float32:
    those take the eager path) and has fewer than 2**31 elements (32-bit row indexing).
    Called for every probe, so cheap checks first."""
    return ((t.is_cuda or _INTERPRET) and t.dtype is not torch.float64 and t.numel() < 1 << 31
            and (_KERNELS if _KERNELS is not None else _load()) is not False)


def enabled(t: torch.Tensor, allow: bool | None = None) -> bool:
    """:func:`usable`, unless PARITY_FUSED_STATS=0 (or ``allow`` is False)."""
    return (allowed() if allow is None else allow) and usable(t)


def _kernels() -> Any:
    if not _load():
        raise RuntimeError("parity.compare.fused needs Triton (and a CUDA device, or TRITON_INTERPRET=1)")
    return _KERNELS


_GEOMETRY: dict[tuple[Any, Any, int], tuple[bool, int, int, int, int, int]] = {}


def _geometry(shape: Any, strides: Any, programs: int, block: int) -> tuple[bool, int, int, int, int, int]:
    """(copy first, rows, row length, row stride, tiles per row, tile width) of a tensor:
    dim 0 is the row (a 0-/1-D tensor is one row); a tensor whose rows are not contiguous
    in memory is copied first (and then has contiguous rows)."""
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
        row_stride = (length if copy else strides[0]) if rows > 1 else 0
    tiles, width = _tiles(rows, length, block, programs)
    return copy, rows, length, row_stride, tiles, width


def _rows(t: torch.Tensor, programs: int, block: int) -> tuple[torch.Tensor, tuple[bool, int, int, int, int, int]]:
    """The tensor to read (copied only when its rows are not contiguous) and its geometry
    for about ``programs`` programs of ``block`` columns per step; geometries are cached by
    shape and strides, which repeat from block to block."""
    key = (t.shape, t.stride(), programs, block)
    g = _GEOMETRY.get(key)
    if g is None:
        g = _GEOMETRY[key] = _geometry(tuple(t.shape), t.stride(), programs, block)
    return (t.contiguous() if g[0] else t), g


def _tiles(rows: int, length: int, block: int, programs: int) -> tuple[int, int]:
    """(tiles per row, tile width): about ``programs`` programs, so that short, wide
    tensors fill the GPU."""
    blocks = -(-length // block)
    want = max(1, min(blocks, -(-programs // max(1, rows))))
    width = -(-blocks // want) * block
    return -(-length // width), width


_TOL_BITS: dict[tuple[float, float, float], tuple[int, int, int]] = {}


def tol_bits(atol: float, rtol: float, eps: float) -> tuple[int, int, int]:
    """The float64 bit patterns of (atol, rtol, eps), as the kernel reads them from its
    int64 descriptor (Triton would pass Python floats as float32 and move the tolerance
    boundary)."""
    key = (atol, rtol, eps)
    bits = _TOL_BITS.get(key)
    if bits is None:
        bits = _TOL_BITS[key] = struct.unpack("<3q", struct.pack("<3d", atol, rtol, eps))
    return bits


# -- deferred launches ----------------------------------------------------------------------
#
# Inside ``deferred()`` an arena queues probes instead of launching one kernel each, and
# launches the queue as one kernel (per dtype pair) when it holds HOLD_BYTES of candidates,
# when it runs out of records, when it is finished, and when the outermost ``deferred()``
# exits. A sink may hold probes itself and queue them at once (see ``hold``): the
# Comparator does, as a Run. Queued tensors are read later than they were produced, so
# this is only correct while nothing writes them in place in between: the backend that
# opens the scope vouches for that (parity.engines.torch.runner does for Hugging Face and
# parity's own models).

HOLD_BYTES = 256 << 20
_DEPTH = 0
_WAITING: dict[int, Arena] = {}
_SOURCES: dict[int, Any] = {}  # objects holding probes not yet given to an arena (see hold)


def deferring() -> bool:
    return _DEPTH > 0


def hold(source: Any) -> None:
    """Register ``source``, which keeps probes of its own to queue later: ``source.drain()``
    is called when the outermost ``deferred()`` exits, before the arenas launch. A sink
    that only appends a probe during the forward and queues a whole run of them at once
    spends far less host time per probe than one that queues each as it comes."""
    _SOURCES[id(source)] = source


@contextmanager
def deferred() -> Iterator[None]:
    """Queue fused statistics until the block exits (see above), then launch them."""
    global _DEPTH
    _DEPTH += 1
    ok = False
    try:
        yield
        ok = True
    finally:
        try:
            if _DEPTH == 1 and ok:
                while _SOURCES:  # still deferring: their probes join the arenas' queues
                    _SOURCES.popitem()[1].drain()
        finally:
            _DEPTH -= 1
            if _DEPTH == 0:
                _SOURCES.clear()  # after an error a source keeps its probes (drained when read)
                waiting = list(_WAITING.values())
                _WAITING.clear()
                if ok:  # after an error the queue stays with its arena (launched if it is finished)
                    for arena in waiting:
                        arena.flush()


class _Group:
    """Queued probes of one (candidate dtype, reference dtype) pair: one launch."""

    __slots__ = ("cand_base", "ref_base", "c_ptr", "r_ptr", "c_size", "r_size", "desc", "addrs", "held", "widest",
                 "c_align", "r_align", "len_align")

    def __init__(self, c: torch.Tensor, r: torch.Tensor) -> None:
        self.cand_base, self.ref_base = c, r
        self.c_ptr, self.r_ptr = c.data_ptr(), r.data_ptr()
        self.c_size, self.r_size = c.element_size(), r.element_size()
        self.desc = array("q")
        self.addrs = array("q")  # the candidates' addresses, one per probe
        self.held: list[torch.Tensor] = []  # keeps queued tensors alive until the launch
        self.widest = 0
        self.c_align = 16 // self.c_size if self.c_ptr % 16 == 0 else 1
        self.r_align = 16 // self.r_size if self.r_ptr % 16 == 0 else 1
        self.len_align = 8  # row lengths: a multiple of 8 elements, until one is not


class Plan:
    """What queueing one probe needs that stays the same from forward to forward (its
    reference, tolerance, geometry), made once by :func:`plan`."""

    __slots__ = ("shape", "stride", "dtype", "device", "ref", "r", "r_ptr", "r_stride", "key", "rows", "length",
                 "c_stride", "tiles", "width", "count", "tol", "nbytes", "owner", "build", "raw_shape", "raw_stride")


def _make_plan(c: torch.Tensor, cg: tuple[bool, int, int, int, int, int], r: torch.Tensor,
               rg: tuple[bool, int, int, int, int, int], has_ref: bool, tol: tuple[int, int, int]) -> Plan:
    """The plan of reading ``c`` (and ``r``), whose rows are contiguous, with geometries
    ``cg`` / ``rg`` from :func:`_rows`."""
    _, rows, length, c_stride, tiles, width = cg
    p = Plan()
    p.shape, p.stride, p.dtype, p.device = c.shape, c.stride(), c.dtype, c.device
    p.ref, p.r, p.r_ptr, p.r_stride = r, r, r.data_ptr(), rg[3]
    p.key = (c.dtype, r.dtype, has_ref)
    p.rows, p.length, p.c_stride, p.tiles, p.width, p.count = rows, length, c_stride, tiles, width, rows * tiles
    p.tol, p.nbytes = tol, rows * length * c.element_size()
    p.owner = p.build = None  # set by a caller that keeps the plan
    p.raw_shape = p.raw_stride = None  # the layout of the tensor a view of which was planned (if known)
    return p


def plan(ref: torch.Tensor, cand: torch.Tensor, tol: tuple[int, int, int]) -> Plan | None:
    """A plan for comparing tensors laid out like ``cand`` against ``ref``; None when such
    a probe cannot simply be queued (not usable here, empty, or rows that need a copy)."""
    if not (cand.numel() and usable(cand) and usable(ref)) or ref.shape != cand.shape or ref.device != cand.device:
        return None
    cg = _rows(cand, QUEUED_PROGRAMS, BLOCK)[1]
    if cg[0]:
        return None
    r, rg = _rows(ref, QUEUED_PROGRAMS, BLOCK)  # a reference whose rows are not contiguous is copied once, here
    p = _make_plan(cand, cg, r, rg, True, tol)
    p.ref = ref
    return p


class _Unit:
    """The probes of a run that share a (candidate dtype, reference dtype) pair: one launch."""

    __slots__ = ("key", "idx", "desc", "on_device", "c_size", "r_size", "c_align", "r_align", "len_align", "widest",
                 "r_base")


class Run:
    """A sequence of plans queued together, worked out once (see :meth:`Arena.add_run`):
    every descriptor column is known from the plans (addresses of references, first
    records relative to the run's first), and the descriptor table stays on the device, so
    a forward that repeats the sequence only sends its tensors' addresses. Made by
    :func:`run`; None there when the plans cannot share launches."""

    __slots__ = ("plans", "units", "entries", "records", "nbytes", "builds")


def run(plans: Sequence[Plan]) -> Run | None:
    """A :class:`Run` of ``plans`` (one device, references on the element grid of their
    dtype's first reference), or None."""
    import numpy as np

    n = len(plans)
    if not n or any(p.device != plans[0].device for p in plans):
        return None
    counts = np.fromiter((p.count for p in plans), np.int64, n)
    firsts = np.cumsum(counts) - counts
    by_key: dict[Any, list[int]] = {}
    for i, p in enumerate(plans):
        by_key.setdefault(p.key, []).append(i)
    units = []
    for key, members in by_key.items():
        ps = [plans[i] for i in members]
        u = _Unit()
        u.key, u.idx = key, np.asarray(members, dtype=np.int64)
        u.r_base = ps[0].r
        u.r_size = ps[0].r.element_size()
        u.c_size = ps[0].dtype.itemsize
        desc = np.array([(p.count, p.tiles, p.length, p.width, p.r_ptr, p.c_stride, p.r_stride, 0, *p.tol) for p in ps],
                        dtype=np.int64).reshape(len(ps), NDESC)
        if ((desc[:, 4] - desc[0, 4]) % u.r_size).any():
            return None
        desc[:, 7] = firsts[u.idx]
        u.desc, u.on_device = desc, {}  # device -> the table there
        c_vec, r_vec = 16 // u.c_size, 16 // u.r_size
        u.c_align = c_vec if not (desc[:, 5] % c_vec).any() else 1  # and every address, checked per forward
        u.r_align = r_vec if not (desc[:, 4] % 16).any() and not (desc[:, 6] % r_vec).any() else 1
        u.len_align = 8 if not (desc[:, 2] % 8).any() else 1
        u.widest = int(desc[:, 0].max())
        units.append(u)
    r = Run()
    r.plans, r.units = tuple(plans), units
    r.entries = np.array([(0, p.rows, p.tiles, p.length) for p in plans], dtype=np.int64).reshape(n, 4)
    r.entries[:, 0] = firsts
    r.records = int(counts.sum())
    r.nbytes = sum(p.nbytes for p in plans)
    r.builds = [p.build for p in plans]
    if len(units) == 1:
        units[0].idx = None  # every probe, in order
    return r


class Arena:
    """Records of the probes of one batch on one device, and how to finish them."""

    def __init__(self, device: torch.device) -> None:
        self.kernels = _kernels()
        self.device = device
        self.blocks: list[list[Any]] = []  # [buffer, used records, entries]
        self.groups: dict[tuple[Any, Any, bool], _Group] = {}
        self.runs: list[tuple[Any, ...]] = []  # launches queued by add_run
        self.held = 0  # candidate bytes queued

    def _new_block(self, n: int) -> list[Any]:
        """Start a block of records: queued probes write into the current one, so they are
        launched first; then it is folded (a long prompt's records would all wait for finish)."""
        self.flush()
        if self.blocks:
            self._fold(self.blocks.pop())
        block = [torch.empty(max(n, ARENA_RECORDS), REC, dtype=torch.float64, device=self.device), 0, []]
        self.blocks.append(block)
        return block

    def _reserve(self, count: int) -> tuple[list[Any], int]:
        """(block, first record) of ``count`` consecutive records."""
        block = self.blocks[-1] if self.blocks else None
        if block is None or block[1] + count > block[0].shape[0]:
            block = self._new_block(count)
        first = block[1]
        block[1] = first + count
        return block, first

    def add(self, cand: torch.Tensor, ref: torch.Tensor | None, tol: tuple[int, int, int], on_done: Any) -> None:
        """Queue the row statistics of one probe (``tol``: see :func:`tol_bits`) and launch
        now unless inside ``deferred()``; ``on_done(out, i)`` is told where its 21-slot device
        vector is (row ``i`` of ``out``) when the arena is finished."""
        c, cg = _rows(cand, QUEUED_PROGRAMS, BLOCK)
        r, rg = (c, cg) if ref is None else _rows(ref, QUEUED_PROGRAMS, BLOCK)
        self.add_planned(_make_plan(c, cg, r, rg, ref is not None, tol), c, on_done)

    def add_planned(self, p: Plan, c: torch.Tensor, on_done: Any, at: int | None = None) -> None:
        """:meth:`add` for a probe laid out as ``p`` says (the caller checked). ``at``: its
        first record, reserved by the caller (who then also finishes it)."""
        count = p.count
        block, first = self._reserve(count) if at is None else (None, at)
        g = self.groups.get(p.key)
        if g is None:
            g = self.groups[p.key] = _Group(c, p.r)
        c_off, c_rem = divmod(c.data_ptr() - g.c_ptr, g.c_size)
        r_off, r_rem = divmod(p.r_ptr - g.r_ptr, g.r_size)
        if c_rem or r_rem:  # not on the element grid of the group's first tensors: a group of its own
            self.flush()
            g = self.groups[p.key] = _Group(c, p.r)
            c_off = r_off = 0
        if g.c_align > 1 and (c_off % g.c_align or p.c_stride % g.c_align):
            g.c_align = 1
        if g.r_align > 1 and (r_off % g.r_align or p.r_stride % g.r_align):
            g.r_align = 1
        if p.length % g.len_align:
            g.len_align = 1
        g.desc.extend((count, p.tiles, p.length, p.width, p.r_ptr, p.c_stride, p.r_stride, first, *p.tol))
        g.addrs.append(c.data_ptr())
        g.held.append(c)
        g.held.append(p.r)
        if count > g.widest:
            g.widest = count
        if block is not None:
            block[2].append((first, p.rows, p.tiles, p.length, on_done))
        self.held += p.nbytes
        if self.held > HOLD_BYTES or not _DEPTH:
            self.flush()
        else:
            _WAITING[id(self)] = self

    def add_run(self, r: Run, tensors: list[torch.Tensor], on_done: Any) -> None:
        """Queue one tensor per plan of ``r`` (laid out as its plan says: the caller
        checked), like :meth:`add_planned` for each; the host's work is reading the
        tensors' addresses. ``on_done(out, row)``: the vectors are rows ``row`` to
        ``row + len(tensors) - 1``."""
        import numpy as np

        ptrs = np.fromiter(map(torch.Tensor.data_ptr, tensors), np.int64, len(tensors))
        block, first = self._reserve(r.records)
        for u in r.units:
            cp = ptrs if u.idx is None else ptrs[u.idx]
            misfit = cp % 16
            if misfit.any() and ((cp - cp[0]) % u.c_size).any():  # not on one element grid (never seen)
                for i in (range(len(tensors)) if u.idx is None else u.idx.tolist()):
                    self.add_planned(r.plans[i], tensors[i], None, at=first + int(r.entries[i, 0]))
                continue
            desc = u.on_device.get(self.device)
            if desc is None:
                desc = u.on_device[self.device] = torch.from_numpy(u.desc).to(self.device)
            addrs = torch.from_numpy(cp).to(self.device, non_blocking=True)
            base = tensors[0 if u.idx is None else int(u.idx[0])]
            self.runs.append((u, desc, addrs, first, base, u.c_align if not misfit.any() else 1, tensors))
        block[2].append((r, first, on_done))
        self.held += r.nbytes
        if self.held > HOLD_BYTES or not _DEPTH:
            self.flush()
        else:
            _WAITING[id(self)] = self

    def launch(self, cand: torch.Tensor, ref: torch.Tensor | None, tol: torch.Tensor, on_done: Any) -> None:
        """One probe, launched now with its geometry as arguments (nothing copied to the
        device first): the path outside ``deferred()``. ``tol``: float64 [atol, rtol, eps]
        on the device (see parity.compare.diff._tol_tensor)."""
        if _DEPTH:
            raise RuntimeError("Arena.launch is for probes outside deferred()")
        c, (_, rows, length, c_stride, tiles, width) = _rows(cand, PROGRAMS, ONE_BLOCK)
        if ref is not None:
            r, rg = _rows(ref, PROGRAMS, ONE_BLOCK)
            r_stride = rg[3]
        else:
            r, r_stride = c, c_stride
        block, first = self._reserve(rows * tiles)
        self.kernels._one_kernel[(rows, tiles)](block[0], c, r, tol, first, length, width, c_stride, r_stride,
                                                HAS_REF=ref is not None, BLOCK=ONE_BLOCK, CHUNK=CHUNK,
                                                num_warps=ONE_WARPS)
        block[2].append((first, rows, tiles, length, on_done))

    def flush(self) -> None:
        """Launch the queued probes: one kernel per dtype pair (and per run's unit)."""
        groups, self.groups, self.held = self.groups, {}, 0
        runs, self.runs = self.runs, []
        if not (groups or runs):
            return
        rec = self.blocks[-1][0]
        rows = self.kernels._rows_kernel
        for (_, _, has_ref), g in groups.items():
            desc = torch.frombuffer(g.desc, dtype=torch.int64).to(self.device, non_blocking=True)
            addrs = torch.frombuffer(g.addrs, dtype=torch.int64).to(self.device, non_blocking=True)
            rows[(g.widest, len(g.addrs))](
                desc, addrs, rec, 0, g.cand_base, g.ref_base, HAS_REF=has_ref, BLOCK=BLOCK, C_ALIGN=g.c_align,
                R_ALIGN=g.r_align, LEN_ALIGN=g.len_align, STAGES=STAGES, CHUNK=CHUNK, C_SIZE=g.c_size,
                R_SIZE=g.r_size, num_warps=WARPS)
        for u, desc, addrs, first, cand_base, c_align, _ in runs:
            rows[(u.widest, addrs.shape[0])](
                desc, addrs, rec, first, cand_base, u.r_base, HAS_REF=u.key[2], BLOCK=BLOCK, C_ALIGN=c_align,
                R_ALIGN=u.r_align, LEN_ALIGN=u.len_align, STAGES=STAGES, CHUNK=CHUNK, C_SIZE=u.c_size,
                R_SIZE=u.r_size, num_warps=WARPS)

    def finish(self) -> None:
        """Fold every probe's records (one launch per arena block) and hand out the vectors."""
        self.flush()
        _WAITING.pop(id(self), None)
        blocks, self.blocks = self.blocks, []
        for block in blocks:
            self._fold(block)

    def _fold(self, block: list[Any]) -> None:
        """Fold the records of one block (every probe of it launched) into its probes' vectors."""
        buf, _, entries = block
        if entries:
            flat = array("q")
            calls: list[tuple[Any, int]] = []
            n = 0
            for e in entries:
                calls.append((e[-1], n))
                if len(e) == 3:  # a run (Run, first record, one callback for all its probes)
                    rows = e[0].entries.copy()
                    rows[:, 0] += e[1]
                    flat.frombytes(rows.tobytes())
                    n += rows.shape[0]
                else:
                    flat.extend(e[:4])
                    n += 1
            desc = torch.frombuffer(flat, dtype=torch.int64).to(self.device, non_blocking=True)
            out = torch.empty(n, OUT, dtype=torch.float64, device=self.device)
            self.kernels._finalize_kernel[(n,)](buf, desc, out, RB=128)
            for call, row in calls:
                call(out, row)

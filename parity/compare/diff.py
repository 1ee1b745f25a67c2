"""Diff statistics: pure functions over tensors, computed where the tensors live.

Everything accumulates in float64, in chunks of whole rows (so a [4096, 151936] logits
tensor never gets a full float64 copy), in one pass per chunk, and reaches the host in one
transfer per batch of probes.
NaN/Inf never crash: they are counted, and an element that is non-finite on one side
only counts as an infinite error.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from parity.compare import fused
from parity.dtypes import FP16_MAX
from parity.compare.stats import DiffStats, TensorStats, TokenProfile
from parity.compare.tolerances import Tolerance

CHUNK = 1 << 22
REL_EPS = 1e-6


# -- device-side statistics ----------------------------------------------------------------
#
# One pass over a chunk of whole rows (dim 0 = tokens) computes every statistic at once into
# a small float64 vector; chunks combine on device; the host sees one transfer per batch of
# probes (``Batch.resolve``). On CUDA, parity.compare.fused does the same in one Triton kernel per
# probe (these torch ops are about a hundred small kernels); the eager code below is the
# definition it is tested against, and the path on CPU.

# Slots of the per-chunk vector built by _diff_chunk.
(S_ERR_SUM, S_REL_MAX, S_BAD, S_MISMATCH, S_DOT, S_RR, S_CC, S_NOISE, S_MAX_ERR, S_WIDX, S_WREF,
 S_WCAND, S_CSUM, S_CABSMAX, S_CNAN, S_CINF, S_TOK0, S_LATER, S_RESID, S_AMIN, S_AMAX) = range(21)
_SUM = [S_ERR_SUM, S_BAD, S_MISMATCH, S_DOT, S_RR, S_CC, S_NOISE, S_CSUM, S_CNAN, S_CINF, S_RESID]
_MAX = [S_REL_MAX, S_CABSMAX, S_AMAX]
_F64 = torch.float64


def _tensor_chunk(x: torch.Tensor) -> torch.Tensor:
    """[sum, max |x| (NaN ignored), NaN count, Inf count] of a 2-D chunk, float64."""
    x = x.to(_F64)
    nan = torch.isnan(x)
    return torch.stack([x.sum(), torch.where(nan, 0.0, x.abs()).amax(), nan.sum().to(_F64),
                        torch.isinf(x).sum().to(_F64)])


def _diff_chunk(ref: torch.Tensor, cand: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
    """All diff statistics of one [rows, D] chunk; ``tol`` = [atol, rtol, eps] (float64)."""
    r, c = ref.to(_F64), cand.to(_F64)
    rf, cf = torch.isfinite(r), torch.isfinite(c)
    both = rf & cf
    mismatch = ~both & ~(~rf & ~cf & ((torch.isnan(r) & torch.isnan(c)) | (r == c)))
    r0, c0 = torch.where(both, r, 0.0), torch.where(both, c, 0.0)
    d = (r0 - c0).abs()
    err = torch.where(mismatch, math.inf, d)
    rel = torch.where(mismatch, math.inf, d / (r0.abs() + tol[2]))
    bad = d > (tol[0] + tol[1] * r0.abs())
    m, i = err.reshape(-1).max(dim=0)
    row_err = err.amax(dim=1)
    rr_t, rc_t, cc_t = (r0 * r0).sum(dim=1), (r0 * c0).sum(dim=1), (c0 * c0).sum(dim=1)
    a_t = torch.where(rr_t > 0, rc_t / rr_t.clamp_min(1e-300), 1.0)
    resid = (cc_t - 2.0 * a_t * rc_t + a_t * a_t * rr_t).clamp_min(0.0).sum()
    later = torch.cat([row_err[1:], row_err.new_full((1,), -math.inf)]).amax()
    cnan = torch.isnan(c)
    return torch.stack([
        err.sum(), rel.amax(), bad.sum().to(_F64), mismatch.sum().to(_F64),
        rc_t.sum(), rr_t.sum(), cc_t.sum(), (d * d).sum(),
        m, i.to(_F64), r.reshape(-1).index_select(0, i.reshape(1))[0], c.reshape(-1).index_select(0, i.reshape(1))[0],
        c.sum(), torch.where(cnan, 0.0, c.abs()).amax(), cnan.sum().to(_F64), torch.isinf(c).sum().to(_F64),
        row_err[0], later, resid, a_t.amin(), a_t.amax(),
    ])


def _rows(t: torch.Tensor) -> torch.Tensor:
    """View as [rows, D] with dim 0 = tokens (a 0-/1-D tensor is one row)."""
    t = t.detach()
    return t.reshape(1, -1) if t.dim() < 2 else t.reshape(t.shape[0], math.prod(t.shape[1:]))


def _row_chunks(t: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """(flat offset, chunk) over whole rows, about CHUNK elements each."""
    per = max(1, CHUNK // max(1, t.shape[1]))
    return [(k * t.shape[1], t[k:k + per]) for k in range(0, t.shape[0], per)]


# Small constant tensors, made once per device: building them per probe would be a
# host-to-device copy, i.e. a stall, in the middle of the forward pass.
_CONST: dict[tuple[Any, ...], torch.Tensor] = {}


def _tol_tensor(atol: float, rtol: float, eps: float, device: torch.device) -> torch.Tensor:
    key = ("tol", atol, rtol, eps, str(device))
    if key not in _CONST:
        _CONST[key] = torch.tensor([atol, rtol, eps], dtype=_F64, device=device)
    return _CONST[key]


def _index(slots: list[int], device: torch.device) -> torch.Tensor:
    key = ("idx", tuple(slots), str(device))
    if key not in _CONST:
        _CONST[key] = torch.tensor(slots, dtype=torch.long, device=device)
    return _CONST[key]


def _submit(arena: fused.Arena, cand: torch.Tensor, ref: torch.Tensor | None, atol: float, rtol: float,
            eps: float, on_done: Any) -> None:
    """One probe to ``arena``: queued inside ``fused.deferred()``, launched at once outside."""
    if fused.deferring():
        arena.add(cand, ref, fused.tol_bits(atol, rtol, eps), on_done)
    else:
        arena.launch(cand, ref, _tol_tensor(atol, rtol, eps, cand.device), on_done)


def _fused_vector(cand: torch.Tensor, ref: torch.Tensor | None, atol: float, rtol: float, eps: float) -> torch.Tensor:
    """The 21-slot vector of one tensor (or pair) through parity.compare.fused (two launches)."""
    got: list[torch.Tensor] = []
    arena = fused.Arena(cand.device)
    _submit(arena, cand.detach(), None if ref is None else ref.detach(), atol, rtol, eps,
            lambda out, i: got.append(out[i]))
    arena.finish()
    return got[0]


def tensor_vector(t: torch.Tensor) -> torch.Tensor:
    """Device vector [sum, absmax, nan, inf] of ``t`` (see tensor_stats)."""
    if t.numel() and fused.enabled(t):
        return _fused_vector(t, None, 0.0, 0.0, REL_EPS)[S_CSUM:S_CINF + 1]
    x = _rows(t)
    if x.numel() == 0:
        return torch.zeros(4, dtype=_F64, device=t.device)
    parts = torch.stack([_tensor_chunk(ch) for _, ch in _row_chunks(x)])
    return torch.cat([parts[:, 0].sum().reshape(1), parts[:, 1].amax().reshape(1), parts[:, 2:].sum(dim=0)])


def diff_vector(ref: torch.Tensor, cand: torch.Tensor, tol: Tolerance, eps: float = REL_EPS) -> torch.Tensor:
    """Device vector of every diff statistic (slots S_*), combined over row chunks."""
    if ref.shape != cand.shape:
        raise ValueError(f"shape mismatch {tuple(ref.shape)} vs {tuple(cand.shape)}")
    if cand.numel() == 0:
        return torch.zeros(21, dtype=_F64, device=cand.device)
    if fused.enabled(cand) and fused.enabled(ref):
        return _fused_vector(cand, ref, tol.atol, tol.rtol, eps)
    tv = _tol_tensor(tol.atol, tol.rtol, eps, cand.device)
    r, c = _rows(ref), _rows(cand)
    parts = []
    for (off, rch), (_, cch) in zip(_row_chunks(r), _row_chunks(c)):
        v = _diff_chunk(rch, cch, tv)
        if off:
            v = v.clone()
            v[S_WIDX] += off
        parts.append(v)
    return _combine(parts)


def _combine(parts: list[torch.Tensor]) -> torch.Tensor:
    """One vector of the statistics of consecutive blocks of rows (each block's S_WIDX already
    counted from the tensor's start)."""
    if len(parts) == 1:
        return parts[0]
    p = torch.stack(parts)
    out = p[0].clone()
    idx_sum, idx_max = _index(_SUM, p.device), _index(_MAX, p.device)
    out[idx_sum] = p[:, idx_sum].sum(dim=0)
    out[idx_max] = p[:, idx_max].amax(dim=0)
    out[S_AMIN] = p[:, S_AMIN].amin()
    j = torch.argmax(p[:, S_MAX_ERR])
    out[S_MAX_ERR:S_WCAND + 1] = p[j, S_MAX_ERR:S_WCAND + 1]
    out[S_LATER] = torch.maximum(p[0, S_LATER], p[1:, S_TOK0:S_LATER + 1].amax())
    return out


#: a reference held in host memory and larger than this reaches the candidate's device a block
#: of rows at a time (see diff_vector_from_host)
HOST_BLOCK_BYTES = 64 << 20


def diff_vector_from_host(ref: torch.Tensor, cand: torch.Tensor, tol: Tolerance, eps: float = REL_EPS) -> torch.Tensor:
    """:func:`diff_vector` of a reference in host memory against ``cand`` on a GPU, the reference
    copied over in blocks of whole rows of at most HOST_BLOCK_BYTES: a [4096, 151936] float32
    logits reference (2.3 GiB) never exists whole on the GPU."""
    if ref.shape != cand.shape:
        raise ValueError(f"shape mismatch {tuple(ref.shape)} vs {tuple(cand.shape)}")
    r, c = _rows(ref), _rows(cand)
    per = max(1, HOST_BLOCK_BYTES // max(1, r.shape[1] * r.element_size()))
    if cand.numel() == 0 or per >= r.shape[0]:
        return diff_vector(ref.to(cand.device, non_blocking=True), cand, tol, eps)
    parts = []
    for k in range(0, r.shape[0], per):
        v = diff_vector(r[k:k + per].to(c.device, non_blocking=True), c[k:k + per], tol, eps)
        if k:
            v = v.clone()
            v[S_WIDX] += k * r.shape[1]
        parts.append(v)
    return _combine(parts)


def stats_from(v: list[float], t_shape: list[int], dtype: str) -> TensorStats:
    s, absmax, nan_n, inf_n = v
    n = math.prod(t_shape)
    return TensorStats(list(t_shape), dtype, s / n if n else 0.0, s, absmax, int(nan_n), int(inf_n))


def diff_from(v: list[float], shape: list[int]) -> DiffStats:
    n = math.prod(shape)
    if n == 0:
        return DiffStats(0, 0.0, 0.0, 0.0, 1.0, math.inf, 0.0, 0, 0, [], 0.0, 0.0)
    rr, noise = v[S_RR], v[S_NOISE]
    return DiffStats(
        numel=n, max_abs_err=v[S_MAX_ERR], mean_abs_err=v[S_ERR_SUM] / n, max_rel_err=v[S_REL_MAX],
        cosine=_cosine(v[S_DOT], rr, v[S_CC]), snr_db=_snr_db(rr, noise), nrmse=_nrmse(rr, noise),
        n_bad=int(v[S_BAD]), n_nonfinite_mismatch=int(v[S_MISMATCH]),
        worst_index=_unravel(int(v[S_WIDX]), list(shape)), worst_ref=v[S_WREF], worst_cand=v[S_WCAND],
    )


def cand_stats_from(v: list[float], shape: list[int], dtype: str) -> TensorStats:
    """The candidate tensor's own statistics, which diff_vector computes on the way."""
    return stats_from([v[S_CSUM], v[S_CABSMAX], v[S_CNAN], v[S_CINF]], shape, dtype)


def profile_from(v: list[float], shape: list[int]) -> TokenProfile | None:
    if len(shape) < 2 or shape[0] < 1 or math.prod(shape) == 0:
        return None
    total = v[S_RR]
    return TokenProfile(v[S_TOK0], v[S_LATER] if shape[0] > 1 else None,
                        math.sqrt(v[S_RESID] / total) if total > 0 else 0.0, v[S_AMIN], v[S_AMAX])


class Pending:
    """A device-side statistics vector and how to build its result; resolved with its batch."""

    __slots__ = ("batch", "vec", "row", "build", "device", "_value", "done")

    def __init__(self, batch: Batch, vec: torch.Tensor | None, build: Any, device: torch.device | None = None) -> None:
        self.batch, self.vec, self.build = batch, vec, build
        self.row = 0  # the vector is row ``row`` of ``vec`` when that is 2-D (a fused batch)
        self.device = vec.device if vec is not None else device
        self._value: Any = None
        self.done = False

    def get(self) -> Any:
        if not self.done:
            self.batch.resolve()
        return self._value

    def set_vec(self, out: torch.Tensor, row: int) -> None:
        self.vec, self.row = out, row

    def part(self, i: int) -> _Part:
        """Element ``i`` of this pending tuple result, resolved with it (no second transfer)."""
        return _Part(self, i)


class RunPending(Pending):
    """The device-side vectors of a run of probes (rows ``row`` to ``row + n - 1`` of
    ``vec``); resolves to the list of their results."""

    __slots__ = ("builds",)

    def __init__(self, batch: Batch, builds: list[Any], device: torch.device) -> None:
        super().__init__(batch, None, None, device)
        self.builds = builds


class _Part:
    __slots__ = ("parent", "i")

    def __init__(self, parent: Pending, i: int) -> None:
        self.parent, self.i = parent, i

    def get(self) -> Any:
        return self.parent.get()[self.i]


class Batch:
    """Pending statistics brought to the host together: one device-to-host transfer per
    device, however many probes, so capturing never stalls the GPU probe by probe."""

    def __init__(self) -> None:
        self.items: list[Pending] = []
        self.arenas: dict[torch.device, fused.Arena] = {}
        self.fused = fused.allowed()
        self.before_finish: list[Any] = []  # called first by finish() (sinks that hold probes)

    def add(self, vec: torch.Tensor, build: Any) -> Pending:
        item = Pending(self, vec, build)
        self.items.append(item)
        return item

    def _arena(self, device: torch.device) -> fused.Arena:
        arena = self.arenas.get(device)
        if arena is None:
            arena = self.arenas[device] = fused.Arena(device)
        return arena

    def add_diff(self, ref: torch.Tensor, cand: torch.Tensor, tol: Tolerance, build: Any) -> Pending:
        """Queue the diff vector of ``cand`` against ``ref`` (slots S_*); on CUDA one fused
        kernel launch (or a share of one, see parity.compare.fused.deferred), finished with the
        rest of the batch. Called for every probe: keep it lean."""
        if not (self.fused and cand.numel() and fused.usable(cand) and fused.usable(ref)):
            return self.add(diff_vector(ref, cand, tol), build)
        if ref.shape != cand.shape:
            raise ValueError(f"shape mismatch {tuple(ref.shape)} vs {tuple(cand.shape)}")
        device = cand.device
        item = Pending(self, None, build, device)
        _submit(self._arena(device), cand, ref, tol.atol, tol.rtol, REL_EPS, item.set_vec)
        self.items.append(item)
        return item

    def queue(self, p: fused.Plan, cand: torch.Tensor) -> Pending:
        """Queue the diff vector of ``cand``, laid out as plan ``p`` says (the caller
        checked), inside ``fused.deferred()``; ``p.build`` makes its result."""
        item = Pending(self, None, p.build, p.device)
        self._arena(p.device).add_planned(p, cand, item.set_vec)
        self.items.append(item)
        return item

    def queue_run(self, r: fused.Run, cands: list[torch.Tensor]) -> RunPending:
        """:meth:`queue` for every plan of run ``r`` and its tensor, in one go, and launch
        now: a run is queued when the forward is done or holds enough (see
        parity.capture.sinks.Comparator.drain), and the host has more to do for it after this."""
        device = r.plans[0].device
        item = RunPending(self, r.builds, device)
        arena = self._arena(device)
        arena.add_run(r, cands, item.set_vec)
        arena.flush()
        self.items.append(item)
        return item

    def add_tensor(self, t: torch.Tensor, build: Any) -> Pending:
        """Queue [sum, absmax, nan, inf] of ``t`` (see tensor_vector)."""
        if not (self.fused and t.numel() and fused.usable(t)):
            return self.add(tensor_vector(t), build)
        device = t.device
        item = Pending(self, None, lambda v: build(v[S_CSUM:S_CINF + 1]), device)
        _submit(self._arena(device), t, None, 0.0, 0.0, REL_EPS, item.set_vec)
        self.items.append(item)
        return item

    def finish(self) -> None:
        """Complete every queued statistic on its device (launches only; nothing comes to
        the host until :meth:`resolve`)."""
        for call in self.before_finish:
            call()
        arenas, self.arenas = self.arenas, {}
        for arena in arenas.values():
            arena.finish()

    def resolve(self) -> None:
        self.finish()
        items, self.items = self.items, []
        by_dev: dict[torch.device, list[Pending]] = {}
        for it in items:
            by_dev.setdefault(it.device, []).append(it)
        for group in by_dev.values():  # one transfer per device: each fused block's rows once
            start: dict[int, int] = {}
            parts = []
            pos = 0
            for it in group:
                if id(it.vec) not in start:
                    start[id(it.vec)] = pos
                    parts.append(it.vec.reshape(-1))
                    pos += parts[-1].numel()
            flat = torch.cat(parts).tolist()
            for it in group:
                n = it.vec.shape[-1]
                at = start[id(it.vec)] + it.row * n
                if it.build is None:  # a RunPending
                    it._value = [b(flat[a:a + n]) for a, b in zip(range(at, at + n * len(it.builds), n), it.builds)]
                else:
                    it._value = it.build(flat[at:at + n])
                it.done, it.vec = True, None


def tensor_stats(t: torch.Tensor) -> TensorStats:
    """Mean, sum, max |x| (NaN ignored), NaN and Inf counts of one tensor."""
    return stats_from(tensor_vector(t).tolist(), list(t.shape), str(t.dtype).removeprefix("torch."))


def compare(ref: torch.Tensor, cand: torch.Tensor, tol: Tolerance, eps: float = REL_EPS) -> DiffStats:
    """Error statistics of ``cand`` against ``ref`` (same shape, same device)."""
    return diff_from(diff_vector(ref, cand, tol, eps).tolist(), list(ref.shape))


def _cosine(dot: float, rr: float, cc: float) -> float:
    if rr == 0.0 and cc == 0.0:
        return 1.0
    if rr == 0.0 or cc == 0.0:
        return 0.0
    return dot / math.sqrt(rr * cc)


def _snr_db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _nrmse(signal: float, noise: float) -> float:
    if noise == 0.0:
        return 0.0
    if signal == 0.0:
        return math.inf
    return math.sqrt(noise / signal)


def _unravel(flat: int, shape: list[int]) -> list[int]:
    out = []
    for dim in reversed(shape):
        out.append(flat % dim)
        flat //= dim
    return list(reversed(out))


def fp16_headroom(abs_max: float) -> float:
    """max |x| as a fraction of the float16 range; > 1 overflows float16."""
    return abs_max / FP16_MAX


def token_profile(ref: torch.Tensor, cand: torch.Tensor) -> TokenProfile | None:
    """Per-token error profile of two same-shape tensors whose dim 0 is tokens."""
    if ref.dim() < 2 or ref.shape[0] < 1 or ref.numel() == 0:
        return None
    return profile_from(diff_vector(ref, cand, Tolerance(0.0, 0.0)).tolist(), list(ref.shape))

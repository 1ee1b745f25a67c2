"""Captures: ordered probe name -> record, plus run metadata.

Two sinks fill them while a backend runs:

* :class:`Recorder` (reference side) keeps each tensor, optionally on another device
  (``store_device="cpu"`` keeps GPU memory free for the candidate), and its stats;
* :class:`Comparator` (candidate side) compares each tensor against the reference the
  moment it is produced and keeps only statistics (the tensor too with ``keep=True``),
  so peak memory does not grow with the number of probes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from parity.compare import fused
from parity.compare.diff import (HOST_BLOCK_BYTES, REL_EPS, Batch, DiffStats, Pending, RunPending, TensorStats, TokenProfile, cand_stats_from,
                         diff_from, diff_vector_from_host, profile_from, stats_from)
from parity.errors import ProbeError
from parity.capture.hooks import canonical
from parity.compare.tolerances import ToleranceTable


class ProbeRecord:
    """One probe of a capture: its statistics (possibly still on the device, resolved on
    first access) and, when kept, the tensor."""

    __slots__ = ("name", "_stats", "tensor", "_k")

    def __init__(self, name: str, stats: TensorStats | Any, tensor: torch.Tensor | None = None, k: int = -1) -> None:
        self.name = name
        self._stats = stats  # or what get()s them: a pending part, or (k >= 0) a run of probes
        self.tensor = tensor
        self._k = k

    @property
    def stats(self) -> TensorStats:
        if not isinstance(self._stats, TensorStats):  # still on the device: resolve its batch
            v = self._stats.get()
            self._stats = v if self._k < 0 else v[self._k][2]
        return self._stats


@dataclass
class Capture:
    backend: str
    meta: dict[str, Any] = field(default_factory=dict)
    records: dict[str, ProbeRecord] = field(default_factory=dict)
    #: fused.Plan per probe, made by Comparators against this capture (see Comparator)
    plans: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    #: fused.Run per sequence of those plans (see Comparator.drain)
    runs: dict[tuple[Any, ...], Any] = field(default_factory=dict, repr=False, compare=False)

    def __contains__(self, name: str) -> bool:
        return name in self.records

    def tensor(self, name: str) -> torch.Tensor:
        if self.meta.pop("_copies_in_flight", False):  # pinned copies issued without a sync
            torch.cuda.synchronize()
        rec = self.records[name]
        if rec.tensor is None:
            raise ProbeError(f"capture '{self.backend}' kept no tensor for '{name}'.")
        return rec.tensor


class Recorder:
    """Sink that records stats and (optionally) tensors into a Capture.

    ``store_device="cpu"`` keeps tensors in host memory (pinned and copied asynchronously
    when they come from a GPU) except the first ``gpu_budget_bytes`` worth, which stay on
    the GPU; statistics stay on the device until first read.
    """

    def __init__(self, capture: Capture, keep: bool = True, store_device: str | torch.device | None = None,
                 gpu_budget_bytes: int = 0) -> None:
        self.capture = capture
        self.keep = keep
        self.store_device = store_device
        self.gpu_budget = gpu_budget_bytes
        self.batch = Batch()

    def _keep(self, t: torch.Tensor) -> torch.Tensor:
        if self.store_device is None:
            return t.clone()
        if t.is_cuda and str(self.store_device) == "cpu":
            if t.numel() * t.element_size() <= self.gpu_budget:
                self.gpu_budget -= t.numel() * t.element_size()
                return t.clone()
            host = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True)
            host.copy_(t, non_blocking=True)
            self.capture.meta["_copies_in_flight"] = True
            return host
        return t.to(self.store_device, copy=True)

    def __call__(self, name: str, tensor: torch.Tensor) -> None:
        t = tensor.detach()
        kept = self._keep(t) if self.keep else None
        shape, dtype = list(t.shape), str(t.dtype).removeprefix("torch.")
        pending = self.batch.add_tensor(t, lambda v: stats_from(v, shape, dtype))
        self.capture.records[name] = ProbeRecord(name, pending, kept)


# Per-token profiles (float64 copies) for passing probes only up to this size; failing
# probes always get one (the diagnosis reads it).
PROFILE_MAX_NUMEL = 1 << 22


#: reference copies (from host memory) that queued launches may hold before they are launched
COPIED_HOLD_BYTES = 64 << 20


class Comparator:
    """Sink that diffs each candidate tensor against the reference capture on arrival.

    Statistics stay on the device until ``diffs``/``profiles`` or a record's stats are read:
    then the whole batch comes to the host in one transfer.
    """

    def __init__(self, reference: Capture, capture: Capture, tolerances: ToleranceTable, keep: bool = False) -> None:
        self.reference = reference
        self.capture = capture
        self.tolerances = tolerances
        self.keep = keep
        self.batch = Batch()
        self.plans = reference.plans
        self._pending: list[tuple[Any, Pending]] = []  # (name, pending) or (names, RunPending)
        self._diffs: dict[str, DiffStats] = {}
        self._profiles: dict[str, TokenProfile] = {}
        self._held: list[tuple[str, Any, torch.Tensor, torch.Tensor | None]] = []  # see drain
        self._held_bytes = 0
        self._unrecorded: list[tuple[list[Any], Any, Any]] = []  # queued, records not made yet (see drain)
        self._fits: set[Any] = set()  # plans checked to hold for this Comparator (see _fit)
        self.batch.before_finish.append(self.drain)
        self.last: str | None = None  # the last probe received (names where a failing run got to)
        self._copied = 0  # bytes of reference copies queued since the last launch (see __call__)

    def drain(self, final: bool = True) -> None:
        """Queue the probes held by the fast path (see __call__): as one :class:`fused.Run`
        when an earlier forward held the same plans in the same order. Their records are
        made when ``final`` (the forward is over, or its records are needed), after the
        launch: the GPU is busy with the statistics meanwhile."""
        held, self._held, self._held_bytes = self._held, [], 0
        if held:
            fused._SOURCES.pop(id(self), None)
            plans = tuple([h[1] for h in held])
            runs = self.reference.runs
            r = runs.get(plans)
            if r is None and plans not in runs:
                if len(runs) >= 256:
                    runs.clear()
                r = runs[plans] = fused.run(plans)
            if r is None:
                items = [self.batch.queue(p, tensor) for _, p, tensor, _ in held]
                self._pending.extend((h[0], it) for h, it in zip(held, items))
                self._unrecorded.append((held, None, items))
            else:
                item = self.batch.queue_run(r, [h[2] for h in held])
                self._pending.append(([h[0] for h in held], item))
                self._unrecorded.append((held, item, None))
        if final and self._unrecorded:
            unrecorded, self._unrecorded = self._unrecorded, []
            records = self.capture.records
            for held, item, items in unrecorded:
                if items is None:
                    for k, (name, _, _, kept) in enumerate(held):
                        records[name] = ProbeRecord(name, item, kept, k)
                else:
                    for (name, _, _, kept), it in zip(held, items):
                        records[name] = ProbeRecord(name, it.part(2), kept)

    def _settle(self) -> None:
        self.drain()
        pending, self._pending = self._pending, []
        for name, p in pending:
            if isinstance(p, RunPending):
                for n, (diff, prof, _) in zip(name, p.get()):
                    self._diffs[n] = diff
                    if prof is not None:
                        self._profiles[n] = prof
                continue
            diff, prof, _ = p.get()
            self._diffs[name] = diff
            if prof is not None:
                self._profiles[name] = prof

    @property
    def diffs(self) -> dict[str, DiffStats]:
        self._settle()
        return self._diffs

    @property
    def profiles(self) -> dict[str, TokenProfile]:
        self._settle()
        return self._profiles

    def _fit(self, name: str, p: Any) -> bool:
        """Whether plan ``p`` of ``name`` still holds for this Comparator (same reference
        record, same tolerances, fused statistics on), remembered in _fits: the reference
        does not change while a Comparator runs."""
        rec = self.reference.records.get(name)
        ok = ((p.owner is self.tolerances or p.owner == self.tolerances) and self.batch.fused
              and rec is not None and rec.tensor is p.ref)
        if ok:
            self._fits.add(p)
        return ok

    def _hold(self, name: str, p: Any, tensor: torch.Tensor, kept: torch.Tensor | None) -> None:
        """Keep ``tensor`` (laid out as plan ``p`` says) until drain() queues it."""
        q = self._held
        if not q:
            fused.hold(self)
        q.append((name, p, tensor, kept))
        self.last = name
        self._held_bytes += p.nbytes
        if self._held_bytes > fused.HOLD_BYTES:
            self.drain(final=False)

    def take(self, name: str, value: Any, binding: Any) -> None:
        """What a hook sends (see parity.capture.hooks.Taps.connect): ``value`` as the module made
        it, before ``binding``'s head reshape and batch removal. A probe that had the same
        layout on an earlier forward is held as it is: the canonical view would start at
        the same address with the layout the plan has, so making it is skipped."""
        p = self.plans.get(name)
        if (p is not None and p.raw_stride is not None and fused._DEPTH and not self.keep
                and type(value) is torch.Tensor and value.stride() == p.raw_stride and value.shape == p.raw_shape
                and value.dtype is p.dtype and value.device == p.device and not value.requires_grad
                and (p in self._fits or self._fit(name, p))):
            self._hold(name, p, value, None)
            return
        t = canonical(value, None, binding.heads, binding.spec.batched, binding)
        self(name, t)
        p = self.plans.get(name)  # the plan for t's layout, if one was made: it learns value's
        if (p is not None and t.data_ptr() == value.data_ptr() and t.stride() == p.stride and t.shape == p.shape
                and t.dtype is p.dtype and t.device == p.device):
            p.raw_shape, p.raw_stride = value.shape, value.stride()

    def __call__(self, name: str, tensor: torch.Tensor) -> None:
        # Runs for every probe of every forward: keep it lean (see benchmarks/README.md).
        # Fast path: inside fused.deferred(), a probe laid out as last time is only held
        # here, with the plan made then (its reference, tolerance and geometry); drain()
        # queues what is held in one go (when the scope exits, or holds HOLD_BYTES).
        p = self.plans.get(name)
        if (p is not None and fused._DEPTH and tensor.stride() == p.stride and tensor.dtype is p.dtype
                and tensor.shape == p.shape and tensor.device == p.device and not tensor.requires_grad
                and (p in self._fits or self._fit(name, p))):
            self._hold(name, p, tensor, tensor.clone() if self.keep else None)
            return
        if self._held or self._unrecorded:
            self.drain()  # records stay in probe order
        if name not in self.reference.records:
            return  # the reference did not capture it: reported as not compared
        ref = self.reference.tensor(name)
        if ref.shape != tensor.shape:
            raise ProbeError(
                f"probe '{name}' has shape {list(ref.shape)} in the reference but "
                f"{list(tensor.shape)} in the candidate '{self.capture.backend}'.",
                note="both sides must produce the canonical shape (see `parity probes`)",
            )
        t = tensor.detach() if tensor.requires_grad else tensor
        shape, dtype = list(t.shape), _dtype_name(t.dtype)
        tol = self.tolerances.lookup(name)

        def build(v: list[float]) -> tuple[DiffStats, TokenProfile | None, TensorStats]:
            return diff_from(v, shape), profile_from(v, shape), cand_stats_from(v, shape, dtype)

        if ref.device.type == "cpu" and t.is_cuda and ref.numel() * ref.element_size() > HOST_BLOCK_BYTES:
            pending = self.batch.add(diff_vector_from_host(ref, t, tol), build)  # never whole on the GPU
        else:
            if ref.device != t.device:
                ref = ref.to(t.device, non_blocking=True)
            if self.batch.fused and ref is self.reference.records[name].tensor:  # plan the next forwards
                p = fused.plan(ref, t, fused.tol_bits(tol.atol, tol.rtol, REL_EPS))
                if p is not None:
                    p.owner, p.build = self.tolerances, build
                    self.plans[name] = p
            pending = self.batch.add_diff(ref, t, tol, build)
        self._pending.append((name, pending))
        self.last = name
        self.capture.records[name] = ProbeRecord(name, pending.part(2), t.clone() if self.keep else None)
        if ref is not self.reference.records[name].tensor:  # a copy from host memory, held until its launch
            self._copied += ref.numel() * ref.element_size()
            if self._copied > COPIED_HOLD_BYTES:
                self._copied = 0
                arena = self.batch.arenas.get(t.device)
                if arena is not None:
                    arena.flush()  # launched: the copies go back to the allocator


_DTYPE_NAMES: dict[torch.dtype, str] = {}


def _dtype_name(dtype: torch.dtype) -> str:
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype).removeprefix("torch.")
    return name

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

from parity import fused
from parity.diff import (REL_EPS, Batch, DiffStats, Pending, TensorStats, TokenProfile, cand_stats_from, diff_from,
                         profile_from, stats_from)
from parity.errors import ProbeError
from parity.tolerances import ToleranceTable


class ProbeRecord:
    """One probe of a capture: its statistics (possibly still on the device, resolved on
    first access) and, when kept, the tensor."""

    __slots__ = ("name", "_stats", "tensor")

    def __init__(self, name: str, stats: TensorStats | Any, tensor: torch.Tensor | None = None) -> None:
        self.name = name
        self._stats = stats
        self.tensor = tensor

    @property
    def stats(self) -> TensorStats:
        if not isinstance(self._stats, TensorStats):  # still on the device: resolve its batch
            self._stats = self._stats.get()
        return self._stats


@dataclass
class Capture:
    backend: str
    meta: dict[str, Any] = field(default_factory=dict)
    records: dict[str, ProbeRecord] = field(default_factory=dict)
    #: fused.Plan per probe, made by Comparators against this capture (see Comparator)
    plans: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

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
        self._pending: dict[str, Pending] = {}
        self._diffs: dict[str, DiffStats] = {}
        self._profiles: dict[str, TokenProfile] = {}
        self.last: str | None = None  # the last probe received (names where a failing run got to)

    def _settle(self) -> None:
        for name, p in list(self._pending.items()):
            diff, prof, _ = p.get()
            self._diffs[name] = diff
            if prof is not None:
                self._profiles[name] = prof
        self._pending.clear()

    @property
    def diffs(self) -> dict[str, DiffStats]:
        self._settle()
        return self._diffs

    @property
    def profiles(self) -> dict[str, TokenProfile]:
        self._settle()
        return self._profiles

    def __call__(self, name: str, tensor: torch.Tensor) -> None:
        # Runs for every probe of every forward: keep it lean (see benchmarks/README.md).
        # Fast path: inside fused.deferred(), a probe laid out as last time is queued with
        # the plan made then (its reference, tolerance and geometry).
        p = self.plans.get(name)
        if (p is not None and (p.owner is self.tolerances or p.owner == self.tolerances) and fused.deferring()
                and self.batch.fused
                and tensor.stride() == p.stride and tensor.dtype is p.dtype and tensor.shape == p.shape
                and tensor.device == p.device and not tensor.requires_grad):
            rec = self.reference.records.get(name)
            if rec is not None and rec.tensor is p.ref:
                pending = self.batch.queue(p, tensor)
                self._pending[name] = pending
                self.last = name
                self.capture.records[name] = ProbeRecord(name, pending.part(2), tensor.clone() if self.keep else None)
                return
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
        if ref.device != t.device:
            ref = ref.to(t.device, non_blocking=True)
        shape, dtype = list(t.shape), _dtype_name(t.dtype)
        tol = self.tolerances.lookup(name)

        def build(v: list[float]) -> tuple[DiffStats, TokenProfile | None, TensorStats]:
            return diff_from(v, shape), profile_from(v, shape), cand_stats_from(v, shape, dtype)

        if self.batch.fused and ref is self.reference.records[name].tensor:  # plan the next forwards
            p = fused.plan(ref, t, fused.tol_bits(tol.atol, tol.rtol, REL_EPS))
            if p is not None:
                p.owner, p.build = self.tolerances, build
                self.plans[name] = p
        pending = self.batch.add_diff(ref, t, tol, build)
        self._pending[name] = pending
        self.last = name
        self.capture.records[name] = ProbeRecord(name, pending.part(2), t.clone() if self.keep else None)


_DTYPE_NAMES: dict[torch.dtype, str] = {}


def _dtype_name(dtype: torch.dtype) -> str:
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype).removeprefix("torch.")
    return name

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

from parity.diff import DiffStats, TensorStats, TokenProfile, compare, tensor_stats, token_profile
from parity.errors import ProbeError
from parity.tolerances import ToleranceTable


@dataclass
class ProbeRecord:
    name: str
    stats: TensorStats
    tensor: torch.Tensor | None = None


@dataclass
class Capture:
    backend: str
    meta: dict[str, Any] = field(default_factory=dict)
    records: dict[str, ProbeRecord] = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self.records

    def tensor(self, name: str) -> torch.Tensor:
        rec = self.records[name]
        if rec.tensor is None:
            raise ProbeError(f"capture '{self.backend}' kept no tensor for '{name}'.")
        return rec.tensor


class Recorder:
    """Sink that records stats and (optionally) tensors into a Capture."""

    def __init__(self, capture: Capture, keep: bool = True, store_device: str | torch.device | None = None) -> None:
        self.capture = capture
        self.keep = keep
        self.store_device = store_device

    def __call__(self, name: str, tensor: torch.Tensor) -> None:
        kept = None
        if self.keep:
            kept = tensor.detach().clone() if self.store_device is None else tensor.detach().to(self.store_device, copy=True)
        self.capture.records[name] = ProbeRecord(name, tensor_stats(tensor), kept)


# Per-token profiles (float64 copies) for passing probes only up to this size; failing
# probes always get one (the diagnosis reads it).
PROFILE_MAX_NUMEL = 1 << 22


class Comparator:
    """Sink that diffs each candidate tensor against the reference capture on arrival."""

    def __init__(self, reference: Capture, capture: Capture, tolerances: ToleranceTable, keep: bool = False) -> None:
        self.reference = reference
        self.capture = capture
        self.tolerances = tolerances
        self.keep = keep
        self.diffs: dict[str, DiffStats] = {}
        self.profiles: dict[str, TokenProfile] = {}
        self.last: str | None = None  # the last probe received (names where a failing run got to)

    def __call__(self, name: str, tensor: torch.Tensor) -> None:
        if name not in self.reference:
            return  # the reference did not capture it: reported as not compared
        ref = self.reference.tensor(name)
        if tuple(ref.shape) != tuple(tensor.shape):
            raise ProbeError(
                f"probe '{name}' has shape {list(ref.shape)} in the reference but "
                f"{list(tensor.shape)} in the candidate '{self.capture.backend}'.",
                note="both sides must produce the canonical shape (see `parity probes`)",
            )
        ref = ref.to(tensor.device, non_blocking=True)
        self.diffs[name] = compare(ref, tensor, self.tolerances.lookup(name))
        if not self.diffs[name].passed or tensor.numel() <= PROFILE_MAX_NUMEL:
            prof = token_profile(ref, tensor)
            if prof is not None:
                self.profiles[name] = prof
        self.last = name
        kept = tensor.detach().clone() if self.keep else None
        self.capture.records[name] = ProbeRecord(name, tensor_stats(tensor), kept)

"""Per-probe tolerances: glob patterns on probe names, the most specific pattern wins.

A probe passes when every element satisfies ``|ref - cand| <= atol + rtol * |ref|``
(numpy.allclose semantics, as Polygraphy's elementwise check) and no element is
non-finite on one side only.
"""
from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from parity.errors import UsageError


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float

    def __str__(self) -> str:
        return f"atol={self.atol:g} rtol={self.rtol:g}"


def specificity(pattern: str) -> tuple[int, int]:
    """Higher is more specific: fewer wildcards first, then more literal characters."""
    wild = sum(pattern.count(c) for c in "*?[")
    return (-wild, len(pattern) - wild)


@dataclass
class ToleranceTable:
    default: Tolerance
    rules: dict[str, Tolerance] = field(default_factory=dict)
    _cache: dict[str, Tolerance] = field(default_factory=dict, init=False, repr=False, compare=False)

    def lookup(self, probe: str) -> Tolerance:
        """The tolerance of ``probe`` (cached: a run looks up every probe once per pass)."""
        tol = self._cache.get(probe)
        if tol is None:
            hits = [p for p in self.rules if fnmatch.fnmatchcase(probe, p)]
            tol = self._cache[probe] = self.rules[max(hits, key=specificity)] if hits else self.default
        return tol

    def override(self, atol: float | None, rtol: float | None) -> ToleranceTable:
        """Command-line --atol/--rtol replace that field everywhere."""
        if atol is None and rtol is None:
            return self

        def fix(t: Tolerance) -> Tolerance:
            return Tolerance(t.atol if atol is None else atol, t.rtol if rtol is None else rtol)

        return ToleranceTable(fix(self.default), {k: fix(v) for k, v in self.rules.items()})

    def to_dict(self) -> dict[str, Any]:
        out = {"default": {"atol": self.default.atol, "rtol": self.default.rtol}}
        out.update({k: {"atol": v.atol, "rtol": v.rtol} for k, v in self.rules.items()})
        return out


def _tol(raw: Any, where: str) -> Tolerance:
    if not isinstance(raw, Mapping):
        raise UsageError(f"{where} must be a table like {{atol = 1e-3, rtol = 1e-3}}.")
    unknown = set(raw) - {"atol", "rtol"}
    if unknown:
        raise UsageError(f"{where} has unknown key '{sorted(unknown)[0]}'.", note="valid keys: atol, rtol")
    vals = {}
    for k in ("atol", "rtol"):
        v = raw.get(k, 0.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise UsageError(f"{where}.{k} = {v!r} is not a non-negative number.")
        vals[k] = float(v)
    return Tolerance(**vals)


def table_from(raw: Mapping[str, Any], where: str = "tolerances") -> ToleranceTable:
    """Build a table from ``{"default": {...}, "<glob>": {...}, ...}``."""
    if "default" not in raw:
        raise UsageError(f"{where} has no 'default' entry.")
    rules = {k: _tol(v, f"{where}.{k}") for k, v in raw.items() if k != "default"}
    return ToleranceTable(_tol(raw["default"], f"{where}.default"), rules)

"""The fault registry: what a named fault is and how one is registered (:func:`fault`).
Pure Python; parity.faults.library and parity.faults.generation register the built-in ones."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


Apply = Callable[[Any, "FaultSpec", Any], None]  # (module, spec, context) -> None


@dataclass(frozen=True)
class Fault:
    name: str
    summary: str
    apply: Apply
    target: str = "port"  # "port" | "model" | "generation"
    per_block: bool = True


@dataclass(frozen=True)
class FaultSpec:
    fault: Fault
    block: int | None = None

    @property
    def label(self) -> str:
        return self.fault.name + ("" if self.block is None else f"@{self.block}")


FAULTS: dict[str, Fault] = {}


def fault(name: str, summary: str, *, target: str = "port", per_block: bool = True) -> Callable[[Apply], Apply]:
    """Register a named fault."""

    def deco(fn: Apply) -> Apply:
        FAULTS[name] = Fault(name, summary, fn, target, per_block)
        return fn

    return deco

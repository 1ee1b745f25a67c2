"""Named faults: known porting bugs, reproduced on demand (``--fault NAME[@BLOCK]``).

A fault is registered with :func:`fault` and says how it alters the run:

* ``target = "port"``: it changes the built-in engine port (parity.models.engine) after it
  is built and cast — the bug lives in the engine code;
* ``target = "model"``: it changes the weights both sides load (a property of the
  checkpoint, e.g. an outlier channel), applied to the reference before it runs;
* ``target = "generation"``: it changes the candidate's decode loop or generation config
  (stop set, decode-step positions) — only ``parity generate`` can see it.

``block`` is None (every block, or the whole model) or the block index after ``@``.
The generation faults (``eos-token``, ``kv-position``) are registered by parity.decode.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from parity.errors import UsageError

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


def parse(specs: Sequence[str] | None, num_blocks: int) -> list[FaultSpec]:
    """``["silu-wrong-branch@5", "double-rope"]`` -> FaultSpecs; UsageError with the valid list."""
    out: list[FaultSpec] = []
    if specs:
        _load_builtin()
    for raw in specs or ():
        name, _, where = raw.partition("@")
        if name not in FAULTS:
            raise UsageError(f"unknown fault '{name}'.", note="valid faults: " + ", ".join(sorted(FAULTS)))
        block = None
        if where:
            try:
                block = int(where)
            except ValueError:
                raise UsageError(f"--fault {raw}: '{where}' is not a block index.", note="use NAME@BLOCK, e.g. double-rope@1") from None
            if not FAULTS[name].per_block:
                raise UsageError(f"--fault {raw}: fault '{name}' takes no @block.", note="it acts on the whole model or decode loop")
            if not 0 <= block < num_blocks:
                raise UsageError(f"--fault {raw}: block {block} does not exist.", note=f"this model has blocks 0..{num_blocks - 1}")
        out.append(FaultSpec(FAULTS[name], block))
    return out


def _load_builtin() -> None:
    if "double-rope" not in FAULTS:
        import parity.fault_library  # noqa: F401  (registers the built-in faults)
    if "kv-position" not in FAULTS:
        import parity.decode  # noqa: F401  (registers the generation faults)


def describe() -> dict[str, str]:
    _load_builtin()
    return {n: f.summary for n, f in sorted(FAULTS.items())}

"""Named faults: known porting bugs, reproduced on demand (``--fault NAME[@BLOCK]``).

A fault is registered with :func:`fault` and says how it alters the run:

* ``target = "port"``: it changes the built-in engine port (parity.models.engine) after it
  is built and cast — the bug lives in the engine code;
* ``target = "model"``: it changes the weights both sides load (a property of the
  checkpoint, e.g. an outlier channel), applied to the reference before it runs;
* ``target = "generation"``: it changes the candidate's decode loop or generation config
  (stop set, decode-step positions) — only ``parity generate`` can see it;
* ``target = "gguf"``: it alters the copy of the GGUF file ``--candidate llamacpp`` runs
  (parity.faults.gguf: conversion bugs);
* ``target = "tp"``: it alters one rank's shard of a tensor-parallel candidate (``--tp N``,
  parity.faults.sharding).

``block`` is None (every block, or the whole model) or the block index after ``@``.
Port and model faults live in parity.faults.library (imports torch), generation faults in
parity.faults.generation; both register themselves in parity.faults.registry, and are
loaded on first use, so ``import parity.faults`` stays light.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from parity.errors import UsageError
from parity.faults.registry import FAULTS, Fault, FaultSpec, fault

__all__ = ["FAULTS", "Fault", "FaultSpec", "apply_generation", "describe", "fault", "parse"]


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
        import parity.faults.library  # noqa: F401  (registers the port and model faults)
    if "kv-position" not in FAULTS:
        import parity.faults.generation  # noqa: F401  (registers the generation faults)
    if "tp-kv-offset" not in FAULTS:
        import parity.faults.sharding  # noqa: F401  (registers the tensor-parallel faults, --tp N)
    if "gguf-norm-eps" not in FAULTS:
        import parity.faults.gguf  # noqa: F401  (registers the GGUF faults, --candidate llamacpp)


def describe() -> dict[str, str]:
    _load_builtin()
    return {n: f.summary for n, f in sorted(FAULTS.items())}


def apply_generation(names: Sequence[str], gen: Any, num_blocks: int) -> None:
    """Apply the generation faults among ``names`` to ``gen`` (a
    parity.faults.generation.CandidateGeneration); port and model faults are applied where
    the candidate and the reference are built."""
    for spec in parse(names, num_blocks):
        if spec.fault.target == "generation":
            spec.fault.apply(gen, spec, None)

"""The hypothesis registry: what a hypothesis is and how one is registered (:func:`hypothesis`)."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from parity.verdict.hypotheses.core import Evidence, Result

Fn = Callable[[Evidence], "Iterable[Result] | None"]


@dataclass(frozen=True)
class Hypothesis:
    name: str
    points: tuple[str, ...]
    fn: Fn
    generic: bool = False  # a search over a space of variants: tried when no specific hypothesis fits

    def applies(self, point: str) -> bool:
        return "*" in self.points or point in self.points


HYPOTHESES: dict[str, Hypothesis] = {}


def hypothesis(name: str, points: Sequence[str], generic: bool = False) -> Callable[[Fn], Fn]:
    """Register a hypothesis for the canonical points it can explain (``"*"``: any);
    ``generic``: a search (tensor identity, re-implementation variants) run only when no
    specific hypothesis fits -- the specific names stay the names of their points."""

    def deco(fn: Fn) -> Fn:
        HYPOTHESES[name] = Hypothesis(name, tuple(points), fn, generic)
        return fn

    return deco

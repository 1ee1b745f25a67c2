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

    def applies(self, point: str) -> bool:
        return "*" in self.points or point in self.points


HYPOTHESES: dict[str, Hypothesis] = {}


def hypothesis(name: str, points: Sequence[str]) -> Callable[[Fn], Fn]:
    """Register a hypothesis for the canonical points it can explain (``"*"``: any)."""

    def deco(fn: Fn) -> Fn:
        HYPOTHESES[name] = Hypothesis(name, tuple(points), fn)
        return fn

    return deco

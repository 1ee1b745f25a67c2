"""What every kind of run shares: a run's result, progress
stages, the error of a candidate that raised, and the teacher-forced (isolated) pass."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from parity.capture import probes as canon
from parity.capture.sinks import Capture, Comparator
from parity.compare.stats import DiffStats
from parity.compare.tolerances import ToleranceTable
from parity.engines.contract import EngineContext
from parity.errors import ParityError
from parity.report.data import ReportData

Progress = Callable[[str], Any]
#: the engine contract's context (parity.engines.contract), under the name the runners knew it by
CandidateContext = EngineContext


@dataclass
class RunResult:
    report: ReportData
    reference: Capture
    candidate: Capture
    input_ids: list[int]


@contextmanager
def stage(progress: Progress | None, what: str, timings: dict[str, float]) -> Iterator[None]:
    if progress is not None:
        progress(what)
    t0 = time.perf_counter()
    yield
    timings[what] = round(time.perf_counter() - t0, 4)


class CandidateFailed(ParityError):
    """The candidate raised during its forward pass; ``report`` holds what was compared before."""

    def __init__(self, message: str, note: str | None, report: ReportData) -> None:
        super().__init__(message, note)
        self.report = report


def isolation_inputs(num_blocks: int) -> list[str]:
    """Reference probes that teacher forcing feeds to each block."""
    return [canon.stream_into(i) for i in range(num_blocks)]


def isolated(cand: Any, ids: list[int], ref_cap: Capture, tols: ToleranceTable, probes: list[str],
              num_blocks: int) -> tuple[dict[str, DiffStats], dict[str, Any]]:
    """Teacher-forced pass: every block runs on the reference's input of that block."""
    names = isolation_inputs(num_blocks)
    if not all(n in ref_cap for n in names):
        return {}, {}
    block_probes = [p for p in probes if canon.parse(p).block is not None]
    inputs = {i: ref_cap.tensor(n) for i, n in enumerate(names)}
    iso = Comparator(ref_cap, Capture(cand.label + " (isolated)"), tols)
    cand.capture_isolated(ids, inputs, block_probes, iso)
    keep = set(block_probes)
    return {k: v for k, v in iso.diffs.items() if k in keep}, {k: v for k, v in iso.profiles.items() if k in keep}

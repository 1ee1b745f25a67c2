"""Runs: a reference and its precision twin, a candidate compared against them, and what
parity builds on that -- bisect (few probes per engine build) and generation parity
(lockstep greedy decode).

* common -- what every run shares (build context, result, progress, the teacher-forced pass)
* reference -- the float32 reference capture; twin -- the precision twin and verdict settings
* candidate -- one candidate against a reference: ``compare_candidate``; ``execute`` = ``parity run``
* bisect -- ``parity bisect``; generate, decode -- ``parity generate``
"""
from __future__ import annotations

from parity.run.candidate import build_rows, compare_candidate, execute, run_facts
from parity.run.common import CandidateContext, CandidateFailed, Progress, RunResult
from parity.run.reference import Reference, prepare_reference

__all__ = ["CandidateContext", "CandidateFailed", "Progress", "Reference", "RunResult", "build_rows",
           "compare_candidate", "execute", "prepare_reference", "run_facts"]

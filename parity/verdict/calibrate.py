"""Calibrated verdicts: a probe's error judged against what an honest run in the candidate's
dtype gives, not against a fixed atol/rtol.

The **precision twin** is the reference model itself (its weights, its code, its eager
attention) run in the candidate's dtype on the candidate's device. Its error against the
float32 reference, measured with the same statistics, is each probe's noise floor: what
float16 (or bfloat16) rounding alone does to that probe at that depth, with that model's
activation scale. A probe's **excess** is how many times the twin's error the candidate's
error is, on two robust norms::

    nrmse ratio   = nrmse / max(twin_nrmse, floor)
    max-abs ratio = max_abs_err / max(twin_max_abs_err, floor * ref_abs_max)
    excess        = max(nrmse ratio, max-abs ratio / MAX_ABS_SLACK)

The RMS error is the steady measure; one element's error (the worst of millions) is
noisier from run to run, so it gets ``MAX_ABS_SLACK`` (4) times the room -- yet a bug that
touches few elements (one position, one channel) still shows there first. ``floor`` is one
rounding unit of the dtype (float16 2^-11, bfloat16 2^-8): no honest run in that dtype has
less error than one rounding, so a probe the twin reproduces exactly (rotary tables kept in
float32, an embedding lookup) is not judged against zero. A float32 candidate's twin *is*
the reference (error 0): its floor is ``FP32_FLOOR_UNITS`` float32 rounding units, the room
a float32 re-implementation needs for another summation order over 30-80 blocks.

A probe fails when its excess is above the **budget** (``DEFAULT_BUDGET``), or when it turns
finite reference values into NaN/Inf. How the defaults were chosen, from measurements across
families, shapes, dtypes and token counts: benchmarks/README.md ("Calibrated verdicts").

Everything here is pure arithmetic over statistics (no torch); parity.run measures the twin.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from parity.dtypes import UNIT_ROUNDOFF

MODES = ("calibrated", "absolute")
#: excess over the twin above which a probe fails
DEFAULT_BUDGET = 4.0
#: the max-abs ratio counts divided by this (see the module docstring)
MAX_ABS_SLACK = 4.0
#: excess growth at one probe over the largest excess upstream that makes it a step (a bug
#: at that point) rather than accumulation (a candidate losing precision all along)
STEP_GROWTH = 4.0
#: floor of a float32 candidate, in float32 rounding units (its twin is the reference itself)
FP32_FLOOR_UNITS = 64.0


@dataclass
class Twin:
    """The precision twin's errors against the reference, per probe."""

    dtype: str  # "float16", "bfloat16", "float32"
    state: str  # "measured" | "candidate" (the candidate is the twin) | "reference" (float32)
    label: str  # what ran, for the report
    diffs: dict[str, Any] = field(default_factory=dict)  # probe -> DiffStats
    isolated: dict[str, Any] = field(default_factory=dict)  # probe -> DiffStats (teacher-forced)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "state": self.state, "label": self.label, "probes": len(self.diffs),
                "isolated_probes": len(self.isolated), "seconds": round(self.seconds, 4)}


@dataclass(frozen=True)
class Excess:
    value: float  # the verdict's number: max(nrmse_ratio, max_abs_ratio / MAX_ABS_SLACK)
    nrmse_ratio: float
    max_abs_ratio: float
    twin_nrmse: float | None
    twin_max_abs_err: float | None


def _ratio(err: float | None, base: float) -> float:
    if err is None:
        return 0.0
    if not math.isfinite(err):
        return math.inf
    return err / base if base > 0 else (0.0 if err == 0 else math.inf)


@dataclass
class Calibration:
    """How a run judges its probes: ``mode`` "calibrated" (against the twin) or "absolute"
    (the tolerance table's atol/rtol, element by element)."""

    mode: str = "calibrated"
    dtype: str = "float16"
    budget: float = DEFAULT_BUDGET
    twin: Twin | None = None

    @property
    def calibrated(self) -> bool:
        return self.mode == "calibrated"

    @property
    def floor(self) -> float:
        """The smallest relative error (nrmse) an honest run in this dtype is judged against."""
        u = UNIT_ROUNDOFF.get(self.dtype, UNIT_ROUNDOFF["float32"])
        return u * FP32_FLOOR_UNITS if self.dtype == "float32" else u

    def excess(self, name: str, d: Any, ref_abs_max: float | None, isolated: bool = False) -> Excess | None:
        """The excess of diff ``d`` of probe ``name`` (None outside calibrated mode)."""
        if not self.calibrated:
            return None
        twin = None
        if self.twin is not None:
            twin = (self.twin.isolated if isolated else self.twin.diffs).get(name)
        return self.excess_of(d, twin, ref_abs_max)

    def excess_of(self, d: Any, twin: Any, ref_abs_max: float | None) -> Excess:
        """The excess of diff ``d`` over the twin's diff ``twin`` (None: a twin without error)."""
        tn = twin.nrmse if twin is not None else None
        ta = twin.max_abs_err if twin is not None else None
        base_n = max(_finite(tn), self.floor)
        base_a = max(_finite(ta), self.floor * abs(_finite(ref_abs_max)))
        rn, ra = _ratio(d.nrmse, base_n), _ratio(d.max_abs_err, base_a)
        return Excess(max(rn, ra / MAX_ABS_SLACK), rn, ra, tn, ta)

    def allowed_abs(self, twin: Any, ref_abs_max: float | None) -> float:
        """The largest absolute error one element may have: budget x slack x the twin's (floored)."""
        ta = twin.max_abs_err if twin is not None else None
        return self.budget * MAX_ABS_SLACK * max(_finite(ta), self.floor * abs(_finite(ref_abs_max)))

    def over(self, x: Excess | None) -> bool:
        return x is not None and not x.value <= self.budget

    def judge(self, name: str, d: Any, ref_abs_max: float | None, isolated: bool = False) -> bool:
        """True when the probe passes."""
        if d.n_nonfinite_mismatch:
            return False
        if not self.calibrated:
            return bool(d.passed)
        return not self.over(self.excess(name, d, ref_abs_max, isolated))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode}
        if self.calibrated:
            out.update(budget=self.budget, floor=self.floor, dtype=self.dtype,
                       twin=None if self.twin is None else self.twin.to_dict())
        return out


def _finite(x: float | None) -> float:
    return x if x is not None and math.isfinite(x) else 0.0


def resolve_mode(mode: str | None, explicit_tolerances: bool) -> str:
    """The verdict mode: what the user asked for; else absolute when they gave tolerances
    (--atol/--rtol, [tool.parity] tables), calibrated otherwise."""
    from parity.errors import UsageError

    if mode is None:
        return "absolute" if explicit_tolerances else "calibrated"
    if mode not in MODES:
        raise UsageError(f"unknown tolerance mode '{mode}'.", note="valid: " + ", ".join(MODES))
    if mode == "calibrated" and explicit_tolerances:
        raise UsageError("--tolerance calibrated judges against the precision twin; fixed --atol/--rtol or "
                         "tolerance tables do not apply.", note="use --tolerance absolute with tolerances, or drop them")
    return mode


def check_budget(budget: Any) -> float:
    from parity.errors import UsageError

    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget < 1:
        raise UsageError(f"--budget {budget!r}: need a finite number >= 1 (how many times the twin's error a probe may have).")
    return float(budget)


"""ReportData: the one structure every renderer (console, JSON, CSV, HTML) reads."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from parity.summary import Summary, as_summary

#: 1.1: calibrated verdicts -- per probe twin_max_abs_err, twin_nrmse, excess, isolated_excess;
#: run.verdict = {mode, budget, floor, dtype, twin}; atol/rtol null in calibrated runs
#: 1.2: summary.diagnosis gains hypotheses [{name, family, params, residual, fits, cause}], named_cause,
#: location_hint, tokens [{first, last, off}] and targeted {probe, mode, probes, ...}; first_divergence.born_at
#: (all optional: readers of 1.0/1.1 files find them absent)
SCHEMA_VERSION = "1.2"


@dataclass
class ProbeRow:
    name: str
    block: int | None
    component: str
    status: str  # "pass" | "fail" | "not exposed" | "not compared"
    passed: bool | None
    shape: list[int] | None = None
    ref_dtype: str | None = None
    cand_dtype: str | None = None
    ref_mean: float | None = None
    ref_sum: float | None = None
    cand_mean: float | None = None
    cand_sum: float | None = None
    ref_abs_max: float | None = None
    cand_abs_max: float | None = None
    max_abs_err: float | None = None
    mean_abs_err: float | None = None
    max_rel_err: float | None = None
    cosine: float | None = None
    snr_db: float | None = None
    nrmse: float | None = None
    nan: int | None = None
    inf: int | None = None
    ref_nan: int | None = None
    ref_inf: int | None = None
    n_bad: int | None = None
    numel: int | None = None
    worst_index: list[int] | None = None
    worst_token: int | None = None
    worst_channel: int | None = None
    worst_ref: float | None = None
    worst_cand: float | None = None
    fp16_headroom: float | None = None
    atol: float | None = None
    rtol: float | None = None
    isolated_max_abs_err: float | None = None
    #: calibrated runs: the precision twin's error (the reference in the candidate's dtype)
    twin_max_abs_err: float | None = None
    twin_nrmse: float | None = None
    #: calibrated runs: the candidate's error over the twin's (worse of nrmse and max abs)
    excess: float | None = None
    isolated_excess: float | None = None

    @property
    def compared(self) -> bool:
        return self.passed is not None


@dataclass
class ReportData:
    run: dict[str, Any]
    probes: list[ProbeRow]
    summary: Summary  # a mapping given here is read into one
    schema_version: str = SCHEMA_VERSION
    generation: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.summary = as_summary(self.summary)

    def row(self, name: str) -> ProbeRow:
        for r in self.probes:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_pandas(self) -> Any:
        """The probe rows as a pandas DataFrame (one row per probe, the columns of probes.csv),
        for your own analysis: ``parity.run.execute(opts).report.to_pandas()``. Needs pandas
        (``pip install 'parity-debugger[pandas]'``)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("ReportData.to_pandas() needs pandas: pip install 'parity-debugger[pandas]'") from None
        return pd.DataFrame([asdict(r) for r in self.probes], columns=[f.name for f in fields(ProbeRow)])

    def to_dict(self) -> dict[str, Any]:
        return _jsonable({
            "schema_version": self.schema_version,
            "run": self.run,
            "summary": self.summary.to_dict(),
            "probes": [asdict(r) for r in self.probes],
            "generation": self.generation,
        })

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReportData:
        names = {f.name for f in fields(ProbeRow)}
        rows = [ProbeRow(**{k: _unjson(v) for k, v in r.items() if k in names}) for r in d["probes"]]
        return cls(run=d["run"], probes=rows, summary=d["summary"],
                   schema_version=d.get("schema_version", SCHEMA_VERSION), generation=d.get("generation"))


def _jsonable(x: Any) -> Any:
    """Non-finite floats become the strings "nan", "inf", "-inf" (strict JSON has none)."""
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _unjson(x: Any) -> Any:
    if x in ("nan", "inf", "-inf"):
        return float(x)
    return x

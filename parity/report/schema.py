"""The schema of report.json as ``parity report`` and ``parity diff`` read it back: a report of
the wrong shape (probes a list of ints, ``run`` a list, ``cosine`` a string, ``summary`` a
list or an empty object) is an error naming the file and the key, never a traceback from a
renderer or an empty page that looks like a result."""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from parity.errors import UsageError
from parity.validate import check


def _real(v: Any) -> Any:
    """A number, or the strings "nan"/"inf"/"-inf" parity writes for non-finite floats."""
    if v in ("nan", "inf", "-inf"):
        return float(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError("need a number (or \"nan\", \"inf\", \"-inf\")")
    return float(v)


Real = Annotated[float, BeforeValidator(_real)] | None
Int = Annotated[int, Field(strict=True)] | None
Ints = list[Annotated[int, Field(strict=True)]] | None
Str = Annotated[str, Field(strict=True)] | None


class Row(BaseModel):
    """One probe row (parity.report.data.ProbeRow); keys it does not know are ignored."""

    model_config = ConfigDict(extra="ignore")

    name: Annotated[str, Field(strict=True, min_length=1)]
    block: Int = None
    component: Annotated[str, Field(strict=True)]
    status: Annotated[str, Field(strict=True)]
    passed: Annotated[bool, Field(strict=True)] | None
    shape: Ints = None
    ref_dtype: Str = None
    cand_dtype: Str = None
    ref_mean: Real = None
    ref_sum: Real = None
    cand_mean: Real = None
    cand_sum: Real = None
    ref_abs_max: Real = None
    cand_abs_max: Real = None
    max_abs_err: Real = None
    mean_abs_err: Real = None
    max_rel_err: Real = None
    cosine: Real = None
    snr_db: Real = None
    nrmse: Real = None
    nan: Int = None
    inf: Int = None
    ref_nan: Int = None
    ref_inf: Int = None
    n_bad: Int = None
    numel: Int = None
    worst_index: Ints = None
    worst_token: Int = None
    worst_channel: Int = None
    worst_ref: Real = None
    worst_cand: Real = None
    fp16_headroom: Real = None
    atol: Real = None
    rtol: Real = None
    isolated_max_abs_err: Real = None
    twin_max_abs_err: Real = None
    twin_nrmse: Real = None
    excess: Real = None
    isolated_excess: Real = None


Obj = dict[str, Any] | None


class _Named(BaseModel):
    model_config = ConfigDict(extra="allow")

    probe: Annotated[str, Field(strict=True)]


class FirstDivergence(_Named):
    block: Int = None
    component: Str = None
    classification: Str = None
    growth: Real = None
    last_matched: Str = None
    max_abs_err: Real = None
    nrmse: Real = None
    atol: Real = None
    rtol: Real = None
    excess: Real = None
    twin_nrmse: Real = None
    twin_max_abs_err: Real = None


class LargestError(_Named):
    nrmse: Real = None
    max_abs_err: Real = None


class LargestExcess(_Named):
    excess: Real  # required: the page shows it


class Summary(BaseModel):
    """``summary``: the fields of parity.summary.Summary (a test keeps the two in step)."""

    model_config = ConfigDict(extra="allow")

    verdict: Literal["pass", "diverged", "fail", "error"]
    message: Annotated[str, Field(strict=True)]
    probes_compared: Int = None
    probes_failed: Int = None
    probes_not_exposed: Int = None
    first_divergence: FirstDivergence | None = None
    largest_error: LargestError | None = None
    largest_excess: LargestExcess | None = None
    diagnosis: Obj = None
    tolerance: Str = None
    budget: Real = None
    floor: Real = None
    classification: Str = None
    isolation: Str = None


class Verdict(BaseModel):
    model_config = ConfigDict(extra="allow")

    mode: Str = None
    budget: Real = None
    floor: Real = None
    dtype: Str = None
    twin: Obj = None


class Run(BaseModel):
    """``run``: what the renderers read of it (other keys pass through)."""

    model_config = ConfigDict(extra="allow")

    command: Str = None
    model: Str = None
    source: Str = None
    checkpoint: Str = None
    preset: Str = None
    shape: Str = None
    seed: Int = None
    num_blocks: Annotated[int, Field(strict=True, ge=0, le=1 << 20)] | None = None
    reference: Obj = None
    candidate: Obj = None
    dtype: Str = None
    tokens: Annotated[int, Field(strict=True, ge=0)] | None = None
    input_ids: Ints = None
    prompt: Str = None
    verdict: Verdict | None = None
    tolerances: Obj = None
    timings_s: dict[str, Real] | None = None
    versions: Obj = None
    created: Str = None


class Report(BaseModel):
    model_config = ConfigDict(extra="allow")

    schema_version: Str = None
    run: Run
    summary: Summary
    probes: list[Row]
    generation: Obj = None


#: the schema majors this parity reads (report.json's "schema_version": "1.x")
MAJORS = ("1",)
_VERSION = re.compile(r"(\d+)(\.\d+){0,2}")
NOTE = "give a report.json written by `parity run` (or its folder)"


def check_report(raw: Any, label: str) -> Report:
    check_version(raw, label)
    return check(Report, raw, UsageError, label, note=NOTE)


def check_version(raw: Any, label: str) -> None:
    """``schema_version`` "1.x" (or absent, as before it was written): a major this parity does
    not know means fields it would misread."""
    if not isinstance(raw, dict) or "schema_version" not in raw:
        return
    v = raw["schema_version"]
    m = _VERSION.fullmatch(v) if isinstance(v, str) else None
    if m is None:
        raise UsageError(f"{label}: schema_version {v!r} is not a version (like \"1.2\").", note=NOTE)
    if m.group(1) not in MAJORS:
        raise UsageError(f"{label}: schema_version {v} is not one this parity reads ({', '.join(x + '.x' for x in MAJORS)}).",
                         note="a report written by another parity version: render it with that version")

"""Real reports for the HTML/diff tests: one reference, a clean fp16 candidate and one with a
corrupted MLP weight (a 'before the fix' run). Kept small: 8 tokens."""
from __future__ import annotations

from functools import cache
from typing import Any

from parity.options import RunOptions
from parity.report.data import ReportData

XSS_SCRIPT = "<script>alert(1)</script>"
XSS_IMG = '"><img src=x onerror=alert(1)>'


def corrupted(module: str = "transformer.h.2.mlp.w1", scale: float = 1.5) -> Any:
    def create(ctx: Any) -> Any:
        import torch

        from parity.engines.torch import runner as pytorch

        backend = pytorch.create(ctx)
        with torch.no_grad():
            backend.model.get_submodule(module).weight.mul_(scale)
        return backend

    return create


@cache
def sample_reports() -> tuple[ReportData, ReportData]:
    """(broken, fixed) reports of the tiny Qwen, fp16 on CPU."""
    from parity.run import compare_candidate, prepare_reference

    opts = RunOptions(model="qwen", dtype="fp16", device="cpu", tokens=8)
    ref = prepare_reference(opts)
    broken = compare_candidate(ref, opts, create=corrupted()).report
    fixed = compare_candidate(ref, opts).report
    return broken, fixed


def hostile(report: ReportData) -> ReportData:
    """The same report with markup in a prompt, a probe name, the message and generation text."""
    d = report.to_dict()
    d["run"]["prompt"] = f"{XSS_SCRIPT} and {XSS_IMG}"
    d["probes"][1]["name"] = f"embed{XSS_IMG}"
    d["summary"]["message"] += f" {XSS_SCRIPT}"
    d["generation"] = {"stop_tokens": [151645], "steps": [
        {"step": 0, "ref_token": 151644, "cand_token": 151644, "text": XSS_SCRIPT, "match": True},
        {"step": 1, "ref_token": 9707, "cand_token": 11, "text": XSS_IMG, "match": False},
    ]}
    return ReportData.from_dict(d)


@cache
def absolute_reports() -> tuple[ReportData, ReportData]:
    """(broken, fixed) as sample_reports, judged with fixed atol/rtol (--tolerance absolute)."""
    from parity.run import compare_candidate, prepare_reference

    opts = RunOptions(model="qwen", dtype="fp16", device="cpu", tokens=8, tolerance="absolute")
    ref = prepare_reference(opts)
    return compare_candidate(ref, opts, create=corrupted()).report, compare_candidate(ref, opts).report


#: what schema 1.1 added: per probe, in run, in summary and in its first divergence
TWIN_PROBE_FIELDS = ("twin_max_abs_err", "twin_nrmse", "excess", "isolated_excess")
SUMMARY_11 = ("tolerance", "budget", "largest_excess")
FIRST_DIVERGENCE_11 = ("nrmse", "excess", "twin_nrmse", "twin_max_abs_err")


def schema_10(report: ReportData) -> dict[str, Any]:
    """An absolute report as a schema 1.0 report.json held it: no verdict, no twin fields."""
    d = report.to_dict()
    d["schema_version"] = "1.0"
    d["run"].pop("verdict", None)
    for p in d["probes"]:
        for k in TWIN_PROBE_FIELDS:
            p.pop(k, None)
    for k in SUMMARY_11:
        d["summary"].pop(k, None)
    for k in FIRST_DIVERGENCE_11:
        (d["summary"].get("first_divergence") or {}).pop(k, None)
    return d


@cache
def generation_report() -> ReportData:
    """A real calibrated `parity generate` report (tiny Qwen, fp16 on CPU, 3 steps)."""
    from parity.run.generate import GenerateOptions, execute

    return execute(GenerateOptions(model="qwen", dtype="fp16", device="cpu", max_new_tokens=3)).report


@cache
def failing_generation_report() -> ReportData:
    """A real failing `parity generate` report: the built-in llama port with its decode-step
    positions off by one (the kv-position fault), fp16 on CPU, free-running, 8 steps: step 0
    (the prefill) passes, step 1 diverges and the streams part there."""
    from parity.run.generate import GenerateOptions, execute

    return execute(GenerateOptions(model="llama", candidate="port", faults=["kv-position"], dtype="fp16",
                                   device="cpu", max_new_tokens=8)).report

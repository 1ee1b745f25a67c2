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

        from parity.backends import pytorch

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

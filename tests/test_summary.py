"""The typed data model below the verdict and the report: the summary records (exact JSON,
mapping reads), one dtype vocabulary, which probe feeds which -- and all of it without torch."""
from __future__ import annotations

import copy
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from parity import dtypes
from parity.capture import probes as canon
from parity.summary import Diagnosis, FirstDivergence, Summary

ROOT = Path(__file__).resolve().parents[1]


def test_data_model_imports_without_torch() -> None:
    code = ("import sys\n"
            "import parity.summary, parity.dtypes, parity.compare.stats, parity.report.data, parity.report.schema\n"
            "import parity.engines, parity.engines.checks, parity.loading.families\n"
            "[parity.engines.info(n) for n in parity.engines.names()]\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_summary_round_trips_exactly() -> None:
    """What was written (None included, keys of other commands too) is what is read and written back."""
    raw = {"verdict": "diverged", "probes_compared": 3, "probes_failed": 1, "probes_not_exposed": 0,
           "first_divergence": {"probe": "blocks.1.mlp_out", "block": 1, "component": "mlp", "classification": "step",
                                "growth": 12.0, "last_matched": "blocks.1.mlp_in", "max_abs_err": 0.5, "nrmse": 0.1,
                                "atol": None, "rtol": None, "excess": 30.0, "twin_nrmse": 0.001, "twin_max_abs_err": 0.01},
           "largest_error": {"probe": "logits", "nrmse": 0.2, "max_abs_err": 1.0}, "tolerance": "calibrated",
           "budget": 4.0, "floor": 0.0005, "largest_excess": None, "message": "FAILED | ...",
           "diagnosis": {"block": 1, "component": "mlp", "cause": "gating", "named_cause": None, "mine": [1]},
           "isolation": "measured", "quant": {"scheme": "int8-wo"}}
    s = Summary.from_dict(raw)
    assert s.to_dict() == raw and list(s.to_dict()) == list(raw)
    assert s.first_divergence.probe == "blocks.1.mlp_out" and s["first_divergence"]["growth"] == 12.0
    assert s.diagnosis.named_cause is None and "named_cause" in s.diagnosis and s.diagnosis["mine"] == [1]
    assert "born_at" not in s.first_divergence and s.first_divergence.get("born_at") is None
    for copied in (copy.deepcopy(s), pickle.loads(pickle.dumps(s))):
        assert copied.to_dict() == raw


def test_records_built_in_code_write_what_was_set() -> None:
    s = Summary(verdict="pass", probes_compared=2, probes_failed=0, probes_not_exposed=0, tolerance="absolute", message="m")
    assert s.to_dict() == {"verdict": "pass", "probes_compared": 2, "probes_failed": 0, "probes_not_exposed": 0,
                           "first_divergence": None, "largest_error": None, "tolerance": "absolute", "message": "m"}
    s.largest_excess = None  # assigned: written, as null
    s["bisect"] = {"builds": 3}  # no field: kept in extra
    assert s.to_dict()["largest_excess"] is None and s["bisect"] == {"builds": 3} and "diagnosis" not in s
    with pytest.raises(KeyError):
        s["diagnosis"]
    d = Diagnosis(cause="norm", hint="h")
    d["targeted"] = {"probe": "final_norm"}
    assert d.to_dict() == {"cause": "norm", "hint": "h", "targeted": {"probe": "final_norm"}}
    assert FirstDivergence(probe="embed", block=None, component="embed", classification="step").to_dict()["atol"] is None


def test_report_schema_names_the_summary_fields() -> None:
    from parity.report import schema

    assert set(schema.Summary.model_fields) == set(Summary.names())


def test_report_data_reads_and_writes_a_typed_summary() -> None:
    from parity.report.data import ReportData

    rep = ReportData(run={}, probes=[], summary={"verdict": "pass", "message": "ok", "extra_key": 1})
    assert isinstance(rep.summary, Summary) and rep.summary.passed
    again = ReportData.from_dict(json.loads(json.dumps(rep.to_dict())))
    assert again.summary.to_dict() == {"verdict": "pass", "message": "ok", "extra_key": 1}


def test_one_dtype_vocabulary() -> None:
    for text in ("fp16", "float16", "torch.float16"):
        d = dtypes.parse(text)
        assert d is dtypes.FP16 and d == "fp16" and d.long == "float16" and d.max == 65504.0 and d.gguf == "f16"
    assert dtypes.parse("bfloat16") is dtypes.BF16 and dtypes.BF16.unit_roundoff == 2.0**-8
    assert dtypes.find("fp8") is None and dtypes.carry("fp8") == "fp8" and dtypes.long_name("bf16") == "bfloat16"
    with pytest.raises(Exception, match="unknown dtype 'fp8'"):
        dtypes.parse("fp8")
    assert pickle.loads(pickle.dumps(dtypes.FP32)) is dtypes.FP32 and copy.deepcopy(dtypes.FP32) is dtypes.FP32
    assert json.dumps({"dtype": dtypes.BF16}) == '{"dtype": "bf16"}'


def test_run_options_carry_the_parsed_dtype() -> None:
    from parity.options import RunOptions

    o = RunOptions(dtype="bfloat16")
    assert o.dtype is dtypes.BF16 and o.dtype == "bf16"
    assert RunOptions(dtype="fp61").dtype == "fp61"  # checked with the other options (one-line error)


def test_dtype_torch_side() -> None:
    torch = pytest.importorskip("torch")
    assert dtypes.FP16.torch() is torch.float16 and dtypes.half_precision("float32") is None
    assert dtypes.half_precision("bfloat16") is torch.bfloat16


@pytest.mark.parametrize(("name", "fed_by"), [
    ("blocks.0.attn_in", "embed"), ("blocks.2.attn_in", "blocks.1.resid_post"), ("blocks.2.attn.q_rot", "blocks.2.attn.q"),
    ("blocks.2.mlp_in", "blocks.2.resid_mid"), ("blocks.2.resid_post", "blocks.2.mlp_out"),
    ("final_norm", "blocks.3.resid_post"), ("logits", "final_norm"), ("embed", None), ("rope.cos", None)])
def test_which_probe_feeds_which(name: str, fed_by: str | None) -> None:
    assert canon.input_of(name, 4) == fed_by


def test_records_are_mappings() -> None:
    from collections.abc import Mapping

    s = Summary.from_dict({"verdict": "pass", "message": "m", "largest_excess": {"probe": "logits", "excess": 1.5}})
    assert isinstance(s, Mapping) and isinstance(s.largest_excess, Mapping)
    assert s == {"verdict": "pass", "message": "m", "largest_excess": {"probe": "logits", "excess": 1.5}}
    assert dict(s.largest_excess) == {"probe": "logits", "excess": 1.5} and s.get("diagnosis", "none") == "none"

"""End-to-end runs through the CLI (in-process): reports, verdicts, injected faults."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from conftest import read_report
from parity.engines.torch import runner as pytorch

FAMILIES = ["qwen", "qwen2", "llama"]
BLOCK_POINTS = ["attn_in", "attn_out", "mlp_in", "mlp_out", "resid_post"]


@pytest.mark.parametrize("model", FAMILIES)
def test_fp32_candidate_is_exact(model: str, tmp_path: Path, run_cli) -> None:
    code, out, _ = run_cli("run", "--model", model, "--dtype", "fp32", "--device", "cpu", "--tokens", "8", "-q", "--out", str(tmp_path))
    assert code == 0, out
    rep = read_report(tmp_path)
    assert rep["summary"]["verdict"] == "pass" and rep["summary"]["first_divergence"] is None
    compared = [p for p in rep["probes"] if p["passed"] is not None]
    assert compared and all(p["max_abs_err"] == 0.0 and p["mean_abs_err"] == 0.0 for p in compared)
    assert "PASSED" in out


def test_default_run_json_has_all_rows(tmp_path: Path, run_cli) -> None:
    code, out, err = run_cli("run", "--model", "qwen", "--out", str(tmp_path))
    assert code in (0, 1)
    rep = read_report(tmp_path)
    names = [p["name"] for p in rep["probes"]]
    want = ["embed", "rope.cos", "rope.sin", "final_norm", "logits"]
    want += [f"blocks.{i}.{p}" for i in range(rep["run"]["num_blocks"]) for p in BLOCK_POINTS]
    assert set(want) <= set(names)
    assert names.index("embed") < names.index("blocks.0.attn_in") < names.index("logits")
    assert rep["schema_version"] and rep["run"]["candidate"]["dtype"] == "float16"
    assert rep["run"]["reference"]["dtype"] == "float32" and rep["run"]["tokens"] == 32
    keys = {"name", "ref_mean", "ref_sum", "cand_mean", "cand_sum", "max_abs_err", "mean_abs_err",
            "max_rel_err", "cosine", "snr_db", "nan", "inf", "passed"}
    assert keys <= set(rep["probes"][0])
    assert set(rep["summary"]) >= {"verdict", "first_divergence"}
    with open(tmp_path / "probes.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == names
    assert "[parity" in err  # progress lines


def _corrupt(monkeypatch: pytest.MonkeyPatch, module_path: str, scale: float = 1.5) -> None:
    original = pytorch.create

    def create(ctx):  # noqa: ANN001, ANN202
        backend = original(ctx)
        with torch.no_grad():
            backend.model.get_submodule(module_path).weight.mul_(scale)
        return backend

    monkeypatch.setattr(pytorch, "create", create)


@pytest.mark.parametrize(
    ("model", "module", "block", "probe", "component"),
    [
        ("qwen", "transformer.h.2.mlp.w1", 2, "blocks.2.mlp_out", "mlp"),
        ("qwen", "transformer.h.1.attn.c_proj", 1, "blocks.1.attn_out", "attn"),
        ("llama", "model.layers.3.mlp.down_proj", 3, "blocks.3.mlp_out", "mlp"),
        ("qwen2", "model.layers.0.input_layernorm", 0, "blocks.0.attn_in", "norm"),
    ],
)
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_corrupted_weight_diverges_at_that_block(model: str, module: str, block: int, probe: str,
                                                 component: str, dtype: str, tmp_path: Path,
                                                 run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    _corrupt(monkeypatch, module)
    code, out, _ = run_cli("run", "--model", model, "--dtype", dtype, "--tokens", "8", "-q", "--out", str(tmp_path))
    assert code == 1
    fd = read_report(tmp_path)["summary"]["first_divergence"]
    assert (fd["probe"], fd["block"], fd["component"], fd["classification"]) == (probe, block, component, "step")
    assert f"FAILED | {probe}" in out


def test_fp16_default_is_accumulation_not_bug(tmp_path: Path, run_cli) -> None:
    code, _, _ = run_cli("run", "--model", "llama", "--atol", "1e-5", "--rtol", "0", "--tokens", "8", "-q", "--out", str(tmp_path))
    assert code == 1  # tolerances far too tight for fp16: diverged, but as precision loss
    fd = read_report(tmp_path)["summary"]["first_divergence"]
    assert fd["classification"] == "accumulation"


def test_probe_filter(tmp_path: Path, run_cli) -> None:
    code, _, _ = run_cli("run", "--probes", "blocks.*.mlp_out", "-p", "logits", "--tokens", "4", "-q", "--out", str(tmp_path))
    assert code == 0
    names = [p["name"] for p in read_report(tmp_path)["probes"]]
    assert names == [f"blocks.{i}.mlp_out" for i in range(4)] + ["logits"]


def test_bf16_and_sdpa_candidate(tmp_path: Path, run_cli) -> None:
    code, _, _ = run_cli("run", "--model", "qwen2", "--dtype", "bf16", "--attn", "sdpa", "--tokens", "8", "-q", "--out", str(tmp_path))
    rep = read_report(tmp_path)
    assert code == 0, rep["summary"]["message"]
    assert rep["run"]["candidate"]["attn"] == "sdpa" and rep["run"]["candidate"]["dtype"] == "bfloat16"


def test_probes_command_lists_shapes(run_cli) -> None:
    code, out, _ = run_cli("probes", "--model", "qwen", "-p", "blocks.0.*", "-p", "rope.*")
    assert code == 0
    assert "rope.cos" in out and "[T, 32]" in out and "blocks.0.attn.q " in out and "[T, 4, 32]" in out
    assert "transformer.h.0.ln_1" in out


def test_doctor(run_cli) -> None:
    code, out, _ = run_cli("doctor")
    assert code == 0 and "torch" in out and "candidates:" in out


@pytest.mark.slow
def test_compiled_candidate_captures_every_probe(tmp_path: Path, run_cli) -> None:
    """--compile: torch.compile'd candidate still reports every probe (hooks survive dynamo)."""
    code, out, _ = run_cli("run", "--model", "llama", "--compile", "--tokens", "8", "-q", "--out", str(tmp_path))
    rep = read_report(tmp_path)
    assert code == 0, out
    assert rep["run"]["candidate"]["compiled"] is True
    assert all(p["passed"] for p in rep["probes"] if p["status"] != "not exposed")
    assert rep["summary"]["probes_compared"] == 41

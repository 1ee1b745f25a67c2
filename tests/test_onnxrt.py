"""The onnxruntime candidate: probe-marked ONNX export, parity at fp32, exposure, faults, bisect."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from conftest import read_report

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

FAMILIES = ["qwen", "qwen2", "llama"]
ATTN_POINTS = {"attn.q", "attn.k", "attn.v", "attn.q_rot", "attn.k_rot"}


def _run(run_cli, tmp_path: Path, *args: str) -> tuple[int, dict, str, str]:
    code, out, err = run_cli("run", "--candidate", "onnxruntime", "--tokens", "8", "-q", "--out", str(tmp_path), *args)
    return code, (read_report(tmp_path) if (tmp_path / "report.json").exists() else {}), out, err


@pytest.mark.parametrize("model", FAMILIES)
def test_fp32_matches_torch_hooks(model: str, tmp_path: Path, run_cli) -> None:
    code, rep, out, err = _run(run_cli, tmp_path, "--model", model, "--dtype", "fp32")
    assert code == 0, out + err
    cand = rep["run"]["candidate"]
    assert cand["exporter"].startswith("dynamo") and cand["dtype"] == "float32"
    compared = [p for p in rep["probes"] if p["passed"] is not None]
    assert {"embed", "blocks.0.attn_in", "blocks.3.resid_post", "final_norm", "logits"} <= {p["name"] for p in compared}
    for p in compared:  # the same float32 math, other kernels: ~1e-6
        assert p["nrmse"] < 3e-6 and p["max_abs_err"] < 2e-5, p["name"]
    not_exposed = {p["name"] for p in rep["probes"] if p["status"] == "not exposed"}
    assert {"rope.cos", "rope.sin"} <= not_exposed  # folded into constants by the exporter
    assert "rope.cos" in cand["not_exposed"] and "constants" in cand["not_exposed"]["rope.cos"]
    points = {n.split(".", 2)[2] for n in not_exposed if n.startswith("blocks.")}
    if model == "qwen":  # identity hook points leave no node in the graph
        assert points == ATTN_POINTS
    else:
        assert points == set()
    assert "not exposed" in out


@pytest.mark.slow  # several seconds of model builds/exports: make test-all
@pytest.mark.parametrize("model", FAMILIES)
def test_fp16_passes(model: str, tmp_path: Path, run_cli) -> None:
    code, rep, out, err = _run(run_cli, tmp_path, "--model", model, "--dtype", "fp16")
    assert code == 0, out + err
    assert rep["run"]["candidate"]["dtype"] == "float16"


@pytest.mark.slow  # two 512-token exports: make test-all
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_long_sequence_locates_the_real_block_outputs(dtype: str, tmp_path: Path, run_cli) -> None:
    """At 512 tokens the exporter's optimizer shares the rotary tables across blocks, so more
    than one value escapes a block; the block's own output (hidden-size last dim) must win,
    and the fp16 graph keeps rotary inv_freq in float32 as an fp16 deployment does."""
    code, out, err = run_cli("run", "--candidate", "onnxruntime", "--model", "qwen2", "--dtype", dtype, "--tokens", "512",
                             "-q", "--out", str(tmp_path))
    assert code == 0, out + err
    rep = read_report(tmp_path)
    shapes = {p["name"]: p["shape"] for p in rep["probes"] if p["passed"] is not None}
    assert shapes["blocks.0.attn_out"] == shapes["blocks.0.resid_post"] == [512, 128]


@pytest.mark.slow  # several seconds of model builds/exports: make test-all
def test_opt_level_and_provider_options(tmp_path: Path, run_cli) -> None:
    code, rep, _, err = _run(run_cli, tmp_path, "--model", "qwen2", "--dtype", "fp32", "--ort-opt", "disable", "-p", "blocks.0.*")
    assert code == 0, err and rep["run"]["candidate"]["ort_opt"] == "disable"
    code, _, _, err = _run(run_cli, tmp_path / "x", "--model", "qwen2", "--dtype", "fp32", "--ort-provider", "NoSuchExecutionProvider")
    assert code == 2 and "NoSuchExecutionProvider" in err and len(err.strip().splitlines()) == 1
    code, _, _, err = _run(run_cli, tmp_path / "y", "--model", "qwen2", "--dtype", "fp32", "--ort-fault", "model.layers.9.nothing*2")
    assert code == 2 and "fault target" in err
    code, _, _, err = _run(run_cli, tmp_path / "z", "--model", "qwen2", "--dtype", "bf16")
    assert code == 2 and "fp32 or fp16" in err


FAULTS = [
    ("qwen2", "fp32", "model.layers.2.mlp.down_proj", "blocks.2.mlp_out", 2),
    ("qwen", "fp32", "transformer.h.1.attn.c_proj", "blocks.1.attn_out", 1),
    ("llama", "fp16", "model.layers.3.post_attention_layernorm.weight", "blocks.3.mlp_in", 3),
    ("llama", "fp32", "model.layers.0.self_attn.q_proj", "blocks.0.attn.q", 0),  # k, v (parallel) still pass
]


@pytest.mark.slow  # several seconds of model builds/exports: make test-all
@pytest.mark.parametrize(("model", "dtype", "target", "probe", "block"), FAULTS)
def test_injected_fault_found_by_all_and_bisect(model: str, dtype: str, target: str, probe: str, block: int,
                                                tmp_path: Path, run_cli) -> None:
    base = ("--model", model, "--dtype", dtype, "--ort-fault", f"{target}*1.5")
    code, rep, out, _ = _run(run_cli, tmp_path / "all", *base)
    assert code == 1
    fd = rep["summary"]["first_divergence"]
    assert (fd["probe"], fd["block"], fd["classification"]) == (probe, block, "step"), out
    assert rep["run"]["candidate"]["builds"] == 1

    code, rep, out, _ = _run(run_cli, tmp_path / "bisect", *base, "--mode", "bisect")
    assert code == 1
    b = rep["summary"]["bisect"]
    assert b["answer"] == probe and rep["summary"]["first_divergence"]["probe"] == probe
    n = b["probes_in_order"]
    assert b["builds_made"] <= b["max_builds"] <= math.ceil(math.log2(n)) + 1
    assert rep["run"]["candidate"]["mode"] == "bisect"
    assert all(len(x["marked"]) <= 3 for x in b["builds"]) and b["builds"][0]["marked"] == ["logits"]
    assert f"first divergent probe: {probe}" in out
    measured = [p for p in rep["probes"] if p["passed"] is not None]
    assert len(measured) == len({p for x in b["builds"] for p in x["marked"]})
    print(f"{model} {dtype}: bisect {b['builds_made']} builds for {n} probes")


def test_bisect_command_clean_model_stops_after_one_build(tmp_path: Path, run_cli) -> None:
    code, out, err = run_cli("bisect", "--model", "qwen2", "--candidate", "onnxruntime", "--dtype", "fp32",
                             "--tokens", "8", "-q", "--out", str(tmp_path))
    assert code == 0, err
    b = read_report(tmp_path)["summary"]["bisect"]
    assert b["builds_made"] == 1 and b["answer"] is None and "none (output passes)" in out


def test_bisect_on_torch_candidate_with_marks(tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from parity.engines.torch import runner as pytorch

    original = pytorch.create

    def create(ctx):  # noqa: ANN001, ANN202
        backend = original(ctx)
        with torch.no_grad():
            backend.model.get_submodule("model.layers.1.mlp.up_proj").weight.mul_(1.5)
        return backend

    monkeypatch.setattr(pytorch, "create", create)
    code, out, _ = run_cli("bisect", "--model", "llama", "--dtype", "fp32", "--tokens", "8", "--bisect-marks", "3", "-q", "--out", str(tmp_path))
    assert code == 1
    b = read_report(tmp_path)["summary"]["bisect"]
    assert b["answer"] == "blocks.1.mlp_out" and b["builds_made"] <= b["max_builds"] <= 1 + math.ceil(math.log(b["probes_in_order"], 4))

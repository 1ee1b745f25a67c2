"""TensorRT and TensorRT-LLM paths. Tests marked ``tensorrt`` / ``trtllm`` run only where
those packages import and a CUDA GPU is present; elsewhere they skip and say why. The
unmarked tests check what runs without them: lazy imports, doctor, clear refusals, and the
engine-marking helper on a stand-in module tree."""
from __future__ import annotations

import importlib
import importlib.util
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import read_report

HAS_CUDA = torch.cuda.is_available()
NO_TRT = "TensorRT is not installed (it cannot be on the dev machine); runs where `import tensorrt` works with a GPU"
NO_TRTLLM = "tensorrt_llm is not installed (it cannot be on the dev machine); runs where `import tensorrt_llm` works with a GPU"


@pytest.mark.parametrize("module", ["parity.engines.onnxrt", "parity.engines.tensorrt", "parity.engines.trtllm",
                                    "parity.engines.dump", "parity.engines.trtllm_engine", "parity.engines.onnx_export",
                                    "parity.engines.dumps", "parity.run.bisect", "parity.cli.dump"])
def test_modules_import_without_heavy_packages(module: str) -> None:
    importlib.import_module(module)


def test_doctor_lists_engine_candidates(run_cli) -> None:
    code, out, _ = run_cli("doctor")
    assert code == 0
    for name in ("onnxruntime", "tensorrt", "trtllm", "dump"):
        assert f"  {name} " in out
    if importlib.util.find_spec("tensorrt") is None:
        assert "unavailable (needs tensorrt)" in out


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_tensorrt_unavailable_is_a_clear_error(run_cli) -> None:
    code, _, err = run_cli("run", "--candidate", "tensorrt", "--model", "qwen2", "--tokens", "4", "-q", "--no-files")
    assert code == 2 and "needs tensorrt" in err and "Note:" in err and "pip install" in err  # says how to get it


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_llm") is not None, reason="tensorrt_llm is installed here")
def test_trtllm_unavailable_is_a_clear_error(run_cli) -> None:
    code, _, err = run_cli("run", "--candidate", "trtllm", "--model", "qwen2", "--tokens", "4", "-q", "--no-files")
    assert code == 2 and "needs tensorrt_llm" in err


def test_trtllm_probe_maps_load() -> None:
    from parity.capture.probemap import find_map

    for name in ("trtllm_qwen2", "trtllm_llama", "trtllm_engine"):
        pmap = find_map(name)
        names = pmap.names(2)
        assert "blocks.1.resid_post" in names and "logits" in names and "blocks.0.attn.q" not in names


def test_add_hidden_residual_gets_the_whole_tuple() -> None:
    from parity.capture.hooks import extract
    from parity.capture.probemap import find_map

    b = find_map("trtllm_qwen2").bind("blocks.0.resid_post")
    h, r = torch.ones(3, 4), torch.full((3, 4), 2.0)
    assert torch.equal(extract(b, (), {}, (h, r)), torch.full((3, 4), 3.0))


# -- engine marking helper on a stand-in of tensorrt_llm.module.Module ------------------------

class StandIn:
    """The parts of TensorRT-LLM's Module that mark_probes relies on (public API shape:
    _modules, forward via __call__, register_network_output, named_network_outputs)."""

    def __init__(self, fn: Any = None, **children: Any) -> None:
        self._modules = dict(children)
        self._network_outputs: dict[str, Any] = {}
        self.fn = fn

    def forward(self, x: Any) -> Any:
        for m in self._modules.values():
            x = m(x)
        return self.fn(x) if self.fn else x

    def __call__(self, *a: Any, **k: Any) -> Any:
        return self.forward(*a, **k)

    def register_network_output(self, name: str, value: Any) -> None:
        self._network_outputs[name] = value

    def named_network_outputs(self):  # noqa: ANN201
        yield from self._network_outputs.items()


def test_mark_probes_registers_canonical_outputs_and_restores() -> None:
    from parity.engines.trtllm_engine import debug_tensors, mark_probes

    class Layer(StandIn):
        def forward(self, x: Any) -> Any:
            attn = self._modules["attention"](x)[0]
            return (self._modules["mlp"](attn), "presents")

    class Layers(StandIn):
        def forward(self, x: Any) -> Any:
            for m in self._modules.values():
                x = m(x)[0]
            return x

    layers = Layers(**{"0": Layer(attention=StandIn(lambda x: (x * 2, "kv")), mlp=StandIn(lambda x: x - 1)),
                       "1": Layer(attention=StandIn(lambda x: (x * 2, "kv")), mlp=StandIn(lambda x: x - 1))})
    model = StandIn(transformer=StandIn(vocab_embedding=StandIn(lambda x: x + 100), layers=layers, ln_f=StandIn()),
                    lm_head=StandIn(lambda x: x * 10))
    handle = mark_probes(model, num_blocks=2, probes=["embed", "blocks.*.attn_out", "blocks.1.resid_post", "logits"])
    model(1)
    handle.check()
    outs = dict(model.named_network_outputs())
    # logits is the engine's own output (the model marks it): registering it too would duplicate the name
    assert set(outs) == {"embed", "blocks.0.attn_out", "blocks.1.attn_out", "blocks.1.resid_post"}
    assert "logits" in handle.native
    # 101 -> attn 202 -> mlp 201 -> attn 402 -> mlp 401
    assert (outs["embed"], outs["blocks.0.attn_out"], outs["blocks.1.attn_out"], outs["blocks.1.resid_post"]) \
        == (101, 202, 402, 401)  # tuple element 0, not the kv presents
    assert set(debug_tensors({**outs, "host_context_lengths": 0})) == set(outs)
    assert all("forward" not in m.__dict__ for m in (layers._modules["1"], model._modules["transformer"]))
    handle.remove()
    assert "forward" not in model.__dict__
    model._network_outputs.clear()
    model(1)
    assert not model._network_outputs


def test_write_debug_dump_reads_back(tmp_path: Path, run_cli) -> None:
    from parity.cli import main
    from parity.engines.trtllm_engine import write_debug_dump

    assert main(["dump", "--model", "qwen2", "--tokens", "6", "--out", str(tmp_path / "ref"), "-q", "-p", "blocks.*.mlp_out,logits"]) == 0
    from safetensors.torch import load_file

    ref = load_file(str(tmp_path / "ref" / "tensors.safetensors"))
    buffer = {k: v.unsqueeze(0).half() for k, v in ref.items()} | {"host_request_types": torch.zeros(1)}
    write_debug_dump(buffer, tmp_path / "eng", {"model": "qwen2"})
    code, out, err = run_cli("run", "--model", "qwen2", "--candidate", "dump", "--dump", str(tmp_path / "eng"),
                             "--tokens", "6", "-q", "--no-files")
    assert code == 0, out + err


# -- real engines (skip here) ----------------------------------------------------------------

def _needs(pkg: str, reason: str) -> None:
    pytest.importorskip(pkg, reason=reason)
    if not HAS_CUDA:
        pytest.skip(f"{pkg} imports but no CUDA GPU is visible")


@pytest.mark.tensorrt
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("model", ["qwen", "qwen2", "llama"])
def test_tensorrt_candidate(model: str, dtype: str, tmp_path: Path, run_cli) -> None:
    _needs("tensorrt", NO_TRT)
    code, out, err = run_cli("run", "--model", model, "--candidate", "tensorrt", "--dtype", dtype, "--tokens", "8", "-q", "--out", str(tmp_path))
    assert code == 0, out + err
    assert read_report(tmp_path)["run"]["candidate"]["builds"] == 1


@pytest.mark.tensorrt
def test_tensorrt_fault_all_and_bisect(tmp_path: Path, run_cli) -> None:
    _needs("tensorrt", NO_TRT)
    base = ("run", "--model", "qwen2", "--candidate", "tensorrt", "--dtype", "fp32", "--tokens", "8", "-q",
            "--ort-fault", "model.layers.2.mlp.down_proj*1.5")
    code, _, _ = run_cli(*base, "--out", str(tmp_path / "a"))
    assert code == 1 and read_report(tmp_path / "a")["summary"]["first_divergence"]["probe"] == "blocks.2.mlp_out"
    code, _, _ = run_cli(*base, "--mode", "bisect", "--out", str(tmp_path / "b"))
    b = read_report(tmp_path / "b")["summary"]["bisect"]
    assert code == 1 and b["answer"] == "blocks.2.mlp_out"
    assert b["builds_made"] <= math.ceil(math.log2(b["probes_in_order"])) + 1


@pytest.mark.trtllm
@pytest.mark.parametrize("model", ["qwen2", "llama"])
def test_trtllm_pytorch_backend(model: str, tmp_path: Path, run_cli) -> None:
    _needs("tensorrt_llm", NO_TRTLLM)
    code, out, err = run_cli("run", "--model", model, "--candidate", "trtllm", "--dtype", "fp16", "--tokens", "8", "-q", "--out", str(tmp_path))
    assert code == 0, out + err
    rows = {p["name"]: p for p in read_report(tmp_path)["probes"]}
    assert rows["blocks.0.attn.q"]["status"] == "not exposed" and rows["blocks.3.resid_post"]["passed"]


@pytest.mark.trtllm
def test_trtllm_weight_fault_found(tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    _needs("tensorrt_llm", NO_TRTLLM)
    from parity.engines import trtllm

    original = trtllm.build_model

    def build(reference: Any, family: str, dtype: Any, attn: str) -> Any:
        with torch.no_grad():
            reference.get_submodule("model.layers.1.mlp.down_proj").weight.mul_(1.5)
        return original(reference, family, dtype, attn)

    monkeypatch.setattr(trtllm, "build_model", build)
    code, _, _ = run_cli("run", "--model", "qwen2", "--candidate", "trtllm", "--dtype", "fp16", "--tokens", "8", "-q", "--out", str(tmp_path))
    assert code == 1 and read_report(tmp_path)["summary"]["first_divergence"]["probe"] == "blocks.1.mlp_out"

"""The llamacpp candidate: GGUF files converted by llama.cpp's own converter, probes from the
graph's eval callback, GGUF-side faults localized, decode steps with llama.cpp's KV cache.

Unit tests of the probe map, the q/k layout transform and the GGUF faults run everywhere
(they need only the gguf package); the engine tests need llama-cpp-python (``make llamacpp``)
and are marked slow (each conversion runs llama.cpp's converter, ~20 s)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import read_report

HAVE_LLAMA = importlib.util.find_spec("llama_cpp") is not None
needs_llama = pytest.mark.skipif(not HAVE_LLAMA, reason="llama-cpp-python is not installed (make llamacpp, or "
                                                         "pip install 'parity-debugger[llamacpp]')")


# -- unit tests: no engine ---------------------------------------------------------------------

@pytest.mark.parametrize("module", ["parity.engines.llamacpp.runner", "parity.engines.llamacpp.graph", "parity.engines.llamacpp.actquant",
                                    "parity.faults.gguf", "parity.loading.convert_gguf"])
def test_modules_import_without_llama_cpp(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` raises
    parent, _, child = module.rpartition(".")
    if module in sys.modules:
        monkeypatch.delitem(sys.modules, module)
        # the import below rebinds the package's attribute to a second module object: put the
        # first one back afterwards, or later tests would run two copies of the module (two
        # copies of its classes and state), depending on how each caller imports it
        monkeypatch.setattr(sys.modules[parent], child, getattr(sys.modules[parent], child))
    importlib.import_module(module)


def test_probe_map_names_and_reasons() -> None:
    from parity.engines.llamacpp.graph import load_graph_map
    from parity.capture import probes as canon

    gmap = load_graph_map()
    names = gmap.names(2)
    assert names == canon.in_order(names)
    assert {"embed", "blocks.1.attn.q_rot", "blocks.0.attn_out", "final_norm", "logits"} <= set(names)
    assert "rope.cos" not in names and "ROPE kernel" in gmap.why_not("rope.cos")
    assert gmap.spec("blocks.3.attn.q").node == "Qcur-3" and gmap.spec("blocks.3.attn.q").op_not == "ROPE"
    assert gmap.spec("blocks.3.attn_out").weight == "blk.3.attn_output.weight"
    assert gmap.rope_norm == ("llama",)


def test_rope_pairs_undoes_the_converters_permutation() -> None:
    from parity.engines.llamacpp.graph import rope_pairs
    from parity.faults.gguf import qk_permutation

    heads, hd, T = 3, 8, 5
    w = torch.randn(heads * hd, 16)
    x = torch.randn(T, 16)
    hf = (x @ w.T).reshape(T, heads, hd)
    permuted = x @ w[torch.as_tensor(qk_permutation(heads * hd, heads))].T  # what llama.cpp computes
    assert torch.equal(rope_pairs(permuted.reshape(T, heads, hd), heads), hf)
    assert not torch.equal(permuted.reshape(T, heads, hd), hf)


def _tiny_gguf(path: Path) -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_eos_token_id(2)
    w.add_bos_token_id(1)
    w.add_tensor("blk.0.attn_q.weight", np.arange(8 * 4, dtype=np.float32).reshape(8, 4))
    w.add_tensor("blk.0.attn_k.weight", np.arange(4 * 4, dtype=np.float32).reshape(4, 4))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_the_chosen_file_keeps_its_origin_per_run(tmp_path: Path) -> None:
    """How a run's GGUF file was found travels with that run's options, not in a cache shared by
    the process: one file reached first as the --checkpoint GGUF, then through --gguf, then
    the first run's later stages (their options, even pickled for a rank) each say how."""
    import dataclasses
    import pickle

    pytest.importorskip("gguf")
    from parity.engines.llamacpp import runner
    from parity.options import RunOptions

    f = tmp_path / "m.gguf"
    _tiny_gguf(f)
    first = runner.prepare(RunOptions(model="llama", candidate="llamacpp", checkpoint=str(f)))
    second = runner.prepare(RunOptions(model="llama", candidate="llamacpp", gguf=str(f)))
    assert first.gguf == second.gguf == str(f.resolve())
    assert runner.resolve(second).origin == "--gguf"
    later = dataclasses.replace(runner.prepare(first), isolate=False)  # prepare again, as stages do
    assert runner.resolve(later).origin == "the --checkpoint GGUF file"
    assert runner.resolve(pickle.loads(pickle.dumps(later))).origin == "the --checkpoint GGUF file"
    assert runner.resolve(second).origin == "--gguf"


def test_gguf_faults_edit_a_copy_in_place(tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    from gguf import GGUFReader

    from parity.faults import gguf as gf

    f = tmp_path / "m.gguf"
    _tiny_gguf(f)
    assert "1e-05 -> 0.1" in gf.norm_eps(f)
    assert "2 -> 1" in gf.eos_id(f)
    note = gf.qk_permute(f, None)
    assert "undid" in note and "2 tensors" in note
    r = GGUFReader(str(f))
    eps = r.fields["llama.attention.layer_norm_rms_epsilon"]
    assert abs(float(eps.parts[eps.data[0]][0]) - 0.1) < 1e-7
    q = {t.name: np.array(t.data) for t in r.tensors}["blk.0.attn_q.weight"]
    rows = q[:, 0] / 4  # original row index of each row now
    assert list(rows) == list(np.argsort(gf.qk_permutation(8, 2)))


def test_gguf_faults_need_the_llamacpp_candidate(run_cli, tmp_path: Path) -> None:
    code, out, err = run_cli("run", "--model", "llama", "--fault", "gguf-norm-eps", "-q", "--no-files")
    assert code == 2 and "needs --candidate llamacpp" in out + err


def test_stand_in_tokenizer_is_a_sentencepiece_model(tmp_path: Path) -> None:
    spm = pytest.importorskip("sentencepiece")
    from parity.loading.convert_gguf import write_standin_tokenizer

    write_standin_tokenizer(tmp_path / "tokenizer.model")
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    assert sp.vocab_size() == 259 and sp.IdToPiece(3 + 10) == "<0x0A>" and sp.IsByte(13) and sp.IsControl(2)


def test_absent_engine_is_a_clear_usage_error(run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from parity import engines

    monkeypatch.setattr(engines.Engine, "missing", lambda self: ["llama_cpp"])
    monkeypatch.setattr(engines.Engine, "is_available", lambda self: False)
    code, out, err = run_cli("run", "--model", "llama", "--candidate", "llamacpp", "-q", "--no-files")
    assert code == 2 and "needs llama_cpp" in out + err


# -- the engine ----------------------------------------------------------------------------------

def _run(run_cli, tmp_path: Path, *args: str) -> tuple[int, dict, str]:
    code, out, err = run_cli("run", "--candidate", "llamacpp", "--tokens", "24", "-q", "--out", str(tmp_path), *args)
    rep = read_report(tmp_path) if (tmp_path / "report.json").exists() else {}
    return code, rep, out + err


@needs_llama
@pytest.mark.slow
@pytest.mark.parametrize("model", ["llama", "qwen2"])
def test_converted_f32_matches_at_float32_rounding(model: str, run_cli, tmp_path: Path) -> None:
    code, rep, text = _run(run_cli, tmp_path, "--model", model, "--dtype", "fp32")
    assert code == 0, text
    cand = rep["run"]["candidate"]
    assert cand["gguf_type"] == "F32" and cand["dtype"] == "float32" and cand["kv_cache"] == "F32"
    compared = [p for p in rep["probes"] if p["passed"] is not None]
    assert {"embed", "blocks.0.attn.q", "blocks.0.attn.k", "blocks.3.attn_out", "blocks.3.resid_post", "logits"} \
        <= {p["name"] for p in compared}
    for p in compared:  # float32 kernels, another summation order
        assert p["nrmse"] < 2e-6, (p["name"], p["nrmse"])
    assert {p["name"] for p in rep["probes"] if p["status"] == "not exposed"} == {"rope.cos", "rope.sin"}


@needs_llama
@pytest.mark.slow
@pytest.mark.parametrize("model", ["llama", "qwen2"])
def test_converted_f16_passes_calibrated(model: str, run_cli, tmp_path: Path) -> None:
    code, rep, text = _run(run_cli, tmp_path, "--model", model, "--dtype", "fp16")
    assert code == 0, text
    assert rep["run"]["candidate"]["gguf_type"] == "F16" and rep["run"]["verdict"]["twin"]["state"] == "measured"
    assert rep["summary"]["largest_excess"]["excess"] < 4


@needs_llama
@pytest.mark.slow
@pytest.mark.parametrize("model,fault,probe,named,params", [
    # llama: the converter's q/k permutation left out; qwen2: applied where its rope rotates halves
    ("llama", "gguf-qk-permute@2", "blocks.2.attn.q", "channel-permutation", {"layout": "halves"}),
    ("qwen2", "gguf-qk-permute@1", "blocks.1.attn.q", "channel-permutation", {"layout": "pairs"}),
    ("llama", "gguf-norm-eps", "blocks.0.attn_in", "norm-eps", {"eps": 0.1}),
])
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_conversion_faults_are_localized_and_named(model: str, fault: str, probe: str, named: str, params: dict,
                                                   dtype: str, run_cli, tmp_path: Path) -> None:
    code, rep, text = _run(run_cli, tmp_path, "--model", model, "--dtype", dtype, "--fault", fault)
    assert code == 1, text
    first = rep["summary"]["first_divergence"]
    assert first["probe"] == probe, first
    assert first["component"] == ("norm" if fault == "gguf-norm-eps" else "attn")
    assert rep["run"]["candidate"]["faults"]
    diag = rep["summary"]["diagnosis"]
    assert diag["named_cause"] == named, diag["hint"]  # every built-in fault's exact cause
    win = diag["hypotheses"][0]
    for k, v in params.items():
        assert win["params"][k] == (pytest.approx(v, rel=1e-2) if isinstance(v, float) else v), win


# -- the real model: SmolLM2's Q4_1 GGUF as shipped ---------------------------------------------

def _real_smollm2() -> None:
    from parity.loading import fetch

    if not (REAL_DIR / "config.json").is_file():
        pytest.skip(f"SmolLM2 is not fetched ({REAL_DIR} is missing): run `make model`")
    here = fetch.model_dir("smollm2")
    if here != REAL_DIR and not here.exists():
        here.parent.mkdir(parents=True, exist_ok=True)
        here.symlink_to(REAL_DIR, target_is_directory=True)


def _real_dir() -> Path:
    from parity.loading import fetch

    return fetch.model_dir("smollm2")


REAL_DIR = _real_dir()  # the cache `make model` filled (conftest moves $PARITY_CACHE later)


@needs_llama
@pytest.mark.slow
@pytest.mark.real
def test_smollm2_q4_1_within_the_activation_quantization_twin(run_cli, tmp_path: Path) -> None:
    """llama.cpp's Q4_1 kernels quantize activations to 8 bits per 32: against a float16 twin
    every matmul output is x10-35 off (docs/guide/engines/llamacpp.md), against the twin that emulates the scheme ~x1."""
    _real_smollm2()
    code, out, err = run_cli("run", "--model", "smollm2", "--candidate", "llamacpp", "--chat", "--prompt",
                             "Write a short poem about the sea.", "-q", "--out", str(tmp_path))
    assert code == 0, out + err
    rep = read_report(tmp_path)
    cand, verdict = rep["run"]["candidate"], rep["run"]["verdict"]
    assert cand["gguf_type"] == "Q4_1" and cand["quantized"] and "pinned GGUF" in cand["gguf_origin"]
    assert "activation quantization (q8/32)" in verdict["twin"]["label"] and verdict["budget"] == 4
    compared = [p for p in rep["probes"] if p["excess"] is not None]
    assert len(compared) == 273 and max(p["excess"] for p in compared) < 4
    assert cand["gguf_generation"]["eos_token_id"] == "2"


@needs_llama
@pytest.mark.slow
@pytest.mark.real
def test_generate_reads_the_engines_stop_set_and_finds_a_wrong_eos(run_cli, tmp_path: Path) -> None:
    _real_smollm2()
    args = ["generate", "--model", "smollm2", "--candidate", "llamacpp", "--chat", "--prompt", "What is 2+2?",
            "--max-new-tokens", "4", "--teacher-forcing", "-q"]
    code, out, err = run_cli(*args, "--out", str(tmp_path / "clean"))
    clean = read_report(tmp_path / "clean")["generation"]
    assert all(r["comparable"] for r in clean["steps"]) and len(clean["steps"]) == 4
    assert clean["candidate"]["stop_ids"] and 2 in clean["candidate"]["stop_ids"]
    assert "GGUF metadata" in clean["candidate"]["source"]
    # llama.cpp also ends on tokens SmolLM2's generation config does not list (<|endoftext|>, ...):
    # with the file's eos_token_id the reference's, that is reported, not a failure
    assert clean["stop_set_diff"]["engine_extras_only"] and not clean["stop_set_diff"]["missing_in_candidate"]
    assert code == 0, out + err
    code, out, err = run_cli(*args, "--fault", "gguf-eos-id", "--out", str(tmp_path / "eos"))
    assert code == 1, out + err
    gen = read_report(tmp_path / "eos")["generation"]
    assert 1 in gen["candidate"]["stop_ids"] and 1 not in clean["candidate"]["stop_ids"]
    assert any("<|im_start|>" in t for t in gen["stop_set_diff"]["extra_in_candidate"])
    assert {"key": "eos_token_id", "reference": [2], "candidate": [1]} in gen["sampling_diff"]


@needs_llama
@pytest.mark.slow
def test_qwen_v1_preset_cannot_be_converted_and_says_why(run_cli, tmp_path: Path) -> None:
    """llama.cpp's converter reads Qwen v1's vocabulary only through the checkpoint's remote-code
    tiktoken tokenizer; the clean-room preset has none (docs/guide/engines/llamacpp.md, Qwen v1)."""
    code, out, err = run_cli("run", "--model", "qwen", "--candidate", "llamacpp", "--dtype", "fp32", "--tokens", "8",
                             "-q", "--no-files")
    assert code == 2, out + err
    assert "convert_hf_to_gguf.py failed" in out + err and "AutoTokenizer" in out + err


def test_activation_quantization_is_8_bit_per_block() -> None:
    from torch import nn

    from parity.engines.llamacpp.actquant import quantize_activations, quantize_block

    x = torch.randn(3, 64) * torch.linspace(0.1, 10, 64)
    q = quantize_block(x, 32)
    d = x.reshape(-1, 32).abs().amax(-1, keepdim=True) / 127
    assert ((q.reshape(-1, 32) - x.reshape(-1, 32)).abs() <= d / 2 + 1e-6).all()
    assert ((q.reshape(-1, 32) / d).round() - q.reshape(-1, 32) / d).abs().max() < 1e-4  # 255 levels per block
    model = nn.Sequential()
    model.add_module("lm_head", nn.Linear(64, 4, bias=False))
    applied = quantize_activations(model, {"output.weight": "Q4_1"})
    assert applied == {"lm_head": "q8/32"}
    assert torch.allclose(model(x), q @ model.lm_head.weight.T, atol=1e-5)
    assert quantize_activations(nn.Sequential(nn.Linear(4, 4)), {"output.weight": "F32"}) == {}

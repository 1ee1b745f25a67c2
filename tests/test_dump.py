"""Dumps: parity's own format, TensorRT-LLM engine debug dumps (two TP ranks) and
PyTorch-backend rank dumps built here from their documented layouts; bad dumps exit 2."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import read_report

MODEL, T = "qwen2", "8"  # 4 heads, 2 kv heads, head_dim 32, hidden 128


@pytest.fixture(scope="module")
def ref_dump(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from parity.cli import main

    out = tmp_path_factory.mktemp("dumps") / "ref"
    assert main(["dump", "--model", MODEL, "--tokens", T, "--out", str(out), "-q"]) == 0
    return out


@pytest.fixture(scope="module")
def ref(ref_dump: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ref_dump / "tensors.safetensors"))


def _ids(ref_dump: Path) -> list[int]:
    return json.loads((ref_dump / "input_ids.json").read_text())


def _run_dump(run_cli, folder: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return run_cli("run", "--model", MODEL, "--candidate", "dump", "--dump", str(folder), "--tokens", T,
                   "--dtype", "fp32", "-q", "--out", str(out), *extra)


def test_parity_dump_round_trip(ref_dump: Path, tmp_path: Path, run_cli) -> None:
    manifest = json.loads((ref_dump / "manifest.json").read_text())
    assert manifest["format"] == "parity-dump" and manifest["model"] == MODEL and len(manifest["probes"]) == 41
    code, out, err = _run_dump(run_cli, ref_dump, tmp_path)
    assert code == 0, out + err
    rep = read_report(tmp_path)
    assert all(p["max_abs_err"] == 0.0 for p in rep["probes"] if p["passed"] is not None)
    assert rep["run"]["candidate"]["layout"] == "parity"


@pytest.mark.slow  # several seconds of model builds/exports: make test-all
def test_dump_from_onnxruntime_and_compare(ref_dump: Path, tmp_path: Path, run_cli) -> None:
    pytest.importorskip("onnxruntime")
    code, out, err = run_cli("dump", "--model", MODEL, "--tokens", T, "--candidate", "onnxruntime", "--dtype", "fp32",
                             "--out", str(tmp_path / "ort"), "-q")
    assert code == 0, err
    assert "2 not exposed" in out  # rope tables
    code, out, _ = run_cli("compare", str(ref_dump), str(tmp_path / "ort"), "--out", str(tmp_path / "rep"))
    assert code == 0 and "PASSED" in out
    rows = {p["name"]: p for p in read_report(tmp_path / "rep")["probes"]}
    assert rows["rope.cos"]["status"] == "not exposed" and rows["logits"]["passed"]


def test_compare_finds_a_changed_tensor(ref_dump: Path, ref: dict[str, torch.Tensor], tmp_path: Path, run_cli) -> None:
    from parity.loading.dumps import write_dump

    bad = dict(ref)
    bad["blocks.1.mlp_out"] = ref["blocks.1.mlp_out"] * 1.5
    write_dump(tmp_path / "bad", bad, {"model": MODEL, "dtype": "float32", "input_ids": _ids(ref_dump)})
    code, out, _ = run_cli("compare", str(ref_dump), str(tmp_path / "bad"))
    assert code == 1 and "FAILED | blocks.1.mlp_out" in out


NAME_MAP = """
ignore = ["*.txt"]
[[tensor]]
pattern = 'transformer\\.layers\\.(?P<i>\\d+)\\.mlp_output'
probe = "blocks.{i}.mlp_out"
[[tensor]]
pattern = 'transformer\\.layers\\.(?P<i>\\d+)\\.attention_output_partial'
probe = "blocks.{i}.attn_out"
tp = "sum"
[[tensor]]
pattern = 'transformer\\.layers\\.(?P<i>\\d+)\\.q_proj'
probe = "blocks.{i}.attn.q"
"""


def _save(path: Path, t: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, t.numpy(), allow_pickle=False)


def make_tllm_dump(root: Path, ref: dict[str, torch.Tensor], ids: list[int], tp: int = 2) -> Path:
    """tllm_debug/PP_0/TP_<r>/<name>-step<N>.npy as TensorRT-LLM's Python session writes them."""
    for r in range(tp):
        d = root / "tllm_debug" / "PP_0" / f"TP_{r}"
        _save(d / "input_ids.npy", torch.tensor(ids, dtype=torch.int32))
        _save(d / "host_context_lengths.npy", torch.tensor([len(ids)], dtype=torch.int32))
        for i in range(4):
            mlp = ref[f"blocks.{i}.mlp_out"].unsqueeze(0)  # [1, T, H], all-reduced: same on every rank
            _save(d / f"transformer.layers.{i}.mlp_output-step0.npy", mlp)
            _save(d / f"transformer.layers.{i}.mlp_output-step1.npy", torch.full_like(mlp[:, :1], 99.0))  # a decode step
            (d / f"transformer.layers.{i}.mlp_output-step0.txt").write_text("0.0\n")
            attn = ref[f"blocks.{i}.attn_out"]
            part = attn * 0.25 if r == 0 else attn * 0.75  # row-parallel partial sums (before all-reduce)
            _save(d / f"transformer.layers.{i}.attention_output_partial-step0.npy", part)
            q = ref[f"blocks.{i}.attn.q"]  # [T, 4, 32]: column-parallel, flat [T, 2*32] per rank
            _save(d / f"transformer.layers.{i}.q_proj-step0.npy", q[:, 2 * r:2 * r + 2].reshape(q.shape[0], -1))
            k = ref[f"blocks.{i}.attn.k"]  # canonical name, split by heads: [T, 1, 32] per rank
            _save(d / f"blocks.{i}.attn.k-step0.npy", k[:, r:r + 1])
        logits = ref["logits"]
        v = logits.shape[-1] // tp
        _save(d / "logits-step0.npy", logits[:, r * v:(r + 1) * v].unsqueeze(0))  # lm_head without gather
        _save(d / "final_norm-step0.npy", ref["final_norm"])
    return root


def test_tllm_engine_dump_two_tp_ranks(ref_dump: Path, ref: dict[str, torch.Tensor], tmp_path: Path, run_cli) -> None:
    make_tllm_dump(tmp_path / "eng", ref, _ids(ref_dump))
    (tmp_path / "map.toml").write_text(NAME_MAP)
    code, out, err = _run_dump(run_cli, tmp_path / "eng", tmp_path / "rep", "--dump-map", str(tmp_path / "map.toml"))
    assert code == 0, out + err
    rep = read_report(tmp_path / "rep")
    rows = {p["name"]: p for p in rep["probes"]}
    want = {f"blocks.{i}.{p}" for i in range(4) for p in ("mlp_out", "attn_out", "attn.q", "attn.k")} | {"logits", "final_norm"}
    assert {n for n, p in rows.items() if p["passed"]} == want
    assert all(rows[n]["max_abs_err"] < 1e-5 for n in want)
    assert rows["embed"]["status"] == "not exposed"
    assert rep["run"]["candidate"]["layout"] == "tllm" and rep["run"]["candidate"]["tp_ranks"] == 2


def test_tllm_cpp_executor_iteration_layout(ref_dump: Path, ref: dict[str, torch.Tensor], tmp_path: Path, run_cli) -> None:
    d = tmp_path / "tllm_debug" / "PP_1" / "TP_1"
    _save(d / "iteration_0" / "logits.npy", ref["logits"].unsqueeze(0))
    _save(d / "iteration_0" / "request_ids.npy", torch.tensor([1]))
    _save(d / "iteration_1" / "logits.npy", ref["logits"][:1].unsqueeze(0))
    code, out, err = _run_dump(run_cli, tmp_path, tmp_path / "rep")
    assert code == 0, out + err


def test_torch_backend_rank_dumps(ref_dump: Path, ref: dict[str, torch.Tensor], tmp_path: Path, run_cli) -> None:
    """rank<N>/<counter.Module path>-output.<k>.pt as tensorrt_llm._torch.debug writes them."""
    for r in range(2):
        d = tmp_path / "dump" / f"rank{r}"
        d.mkdir(parents=True)
        for i in range(4):
            # counters: 1.Embedding, then decoder layers 2.., inside a layer 3.mlp after 1.norm 2.attn
            torch.save(ref[f"blocks.{i}.resid_post"].unsqueeze(0), d / f"1.Qwen2Model-{i + 2}.Qwen2DecoderLayer-output.0.pt")
            gate_up = ref[f"blocks.{i}.mlp_in"][:, 64 * r:64 * (r + 1)]  # some column-parallel tensor
            torch.save(gate_up, d / f"1.Qwen2Model-{i + 2}.Qwen2DecoderLayer-4.LayerNormSlice-output.0.pt")
    (tmp_path / "map.toml").write_text(
        "[[tensor]]\npattern = '1\\.Qwen2Model-(?P<i>\\d+)\\.Qwen2DecoderLayer-output\\.0\\.pt'\n"
        "probe = \"blocks.{i}.resid_post\"\noffset = -2\n"
        "[[tensor]]\npattern = '1\\.Qwen2Model-(?P<i>\\d+)\\.Qwen2DecoderLayer-4\\.LayerNormSlice-output\\.0\\.pt'\n"
        "probe = \"blocks.{i}.mlp_in\"\noffset = -2\n")
    code, out, err = _run_dump(run_cli, tmp_path / "dump", tmp_path / "rep", "--dump-map", str(tmp_path / "map.toml"))
    assert code == 0, out + err
    rows = {p["name"]: p for p in read_report(tmp_path / "rep")["probes"] if p["passed"]}
    assert set(rows) == {f"blocks.{i}.{p}" for i in range(4) for p in ("resid_post", "mlp_in")}


# -- bad input: one line, exit 2 -------------------------------------------------------------

def _expect_error(run_cli, folder: Path, out: Path, needle: str, *extra: str) -> None:
    code, stdout, err = _run_dump(run_cli, folder, out, *extra)
    assert code == 2, stdout + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("parity: error:") and needle in lines[0], err


def _copy_parity(ref_dump: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(ref_dump, dst)
    return dst


@pytest.mark.slow  # several seconds of model builds/exports: make test-all
def test_bad_dumps_are_one_line_errors(ref_dump: Path, ref: dict[str, torch.Tensor], tmp_path: Path, run_cli) -> None:
    from parity.loading.dumps import write_dump

    ids = _ids(ref_dump)
    # missing probe: manifest lists one the tensor file lacks
    d = _copy_parity(ref_dump, tmp_path / "missing")
    m = json.loads((d / "manifest.json").read_text())
    m["probes"]["blocks.9.mlp_out"] = {"shape": [8, 128]}
    (d / "manifest.json").write_text(json.dumps(m))
    _expect_error(run_cli, d, tmp_path / "r1", "lacks it")
    # missing on one TP rank
    e = make_tllm_dump(tmp_path / "rankmiss", ref, ids)
    (e / "tllm_debug/PP_0/TP_1/final_norm-step0.npy").unlink()
    _expect_error(run_cli, e, tmp_path / "r2", "missing from TP_1", "--dump-map", str(_map(tmp_path)))
    # mismatched shape: 7 tokens dumped, 8 in the run
    short = {k: v[:7] for k, v in ref.items()}
    write_dump(tmp_path / "short", short, {"model": MODEL, "input_ids": ids})
    _expect_error(run_cli, tmp_path / "short", tmp_path / "r3", "shape")
    # unknown tensor name
    u = tmp_path / "unknown" / "tllm_debug/PP_0/TP_0"
    _save(u / "transformer.layers.0.mystery-step0.npy", ref["logits"])
    _expect_error(run_cli, tmp_path / "unknown", tmp_path / "r4", "transformer.layers.0.mystery")
    # a pickle where a tensor file was expected: object .npy, non-tensor .pt, .pkl
    p = tmp_path / "pickled" / "tllm_debug/PP_0/TP_0"
    p.mkdir(parents=True)
    np.save(p / "logits-step0.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _expect_error(run_cli, tmp_path / "pickled", tmp_path / "r5", "pickled")
    q = tmp_path / "pt" / "rank0"
    q.mkdir(parents=True)
    torch.save({"x": Path("/etc/passwd")}, q / "logits.pt")  # arbitrary pickled object, mapped to a probe
    (tmp_path / "ptmap.toml").write_text("[[tensor]]\npattern = 'logits\\.pt'\nprobe = \"logits\"\n")
    _expect_error(run_cli, tmp_path / "pt", tmp_path / "r6", "logits.pt", "--dump-map", str(tmp_path / "ptmap.toml"))
    k = tmp_path / "pkl" / "rank0"
    k.mkdir(parents=True)
    (k / "logits.pkl").write_bytes(b"\x80\x04N.")
    _expect_error(run_cli, tmp_path / "pkl", tmp_path / "r7", "refusing to load pickle")
    # truncated files: .npy and safetensors
    t = tmp_path / "trunc" / "tllm_debug/PP_0/TP_0"
    _save(t / "logits-step0.npy", ref["logits"])
    raw = (t / "logits-step0.npy").read_bytes()
    (t / "logits-step0.npy").write_bytes(raw[: len(raw) // 2])
    _expect_error(run_cli, tmp_path / "trunc", tmp_path / "r8", "logits-step0.npy")
    s = _copy_parity(ref_dump, tmp_path / "truncst")
    blob = (s / "tensors.safetensors").read_bytes()
    (s / "tensors.safetensors").write_bytes(blob[: len(blob) // 3])
    _expect_error(run_cli, s, tmp_path / "r9", "tensors.safetensors")
    # not a dump at all / no --dump
    (tmp_path / "empty").mkdir()
    _expect_error(run_cli, tmp_path / "empty", tmp_path / "r10", "not a dump folder")
    code, _, err = run_cli("run", "--model", MODEL, "--candidate", "dump", "-q", "--no-files")
    assert code == 2 and "--dump DIR" in err
    # a dump of another model, or of other input ids
    code, _, err = run_cli("run", "--model", "llama", "--candidate", "dump", "--dump", str(ref_dump), "-q", "--no-files")
    assert code == 2 and "is of model 'qwen2'" in err
    code, _, err = run_cli("run", "--model", MODEL, "--candidate", "dump", "--dump", str(ref_dump), "--seed", "5", "--tokens", T, "-q", "--no-files")
    assert code == 2 and "other input ids" in err and "--input-ids" in err


def _map(tmp_path: Path) -> Path:
    path = tmp_path / "map.toml"
    path.write_text(NAME_MAP)
    return path


def test_reassemble_rules() -> None:
    from parity.loading.dumps import DumpError, reassemble

    x = torch.arange(24.0).reshape(2, 3, 4)
    assert torch.equal(reassemble("blocks.0.attn.q", [x[:, :1], x[:, 1:]], [2, 3, 4]), x)  # heads axis
    flat = [x[:, :1].reshape(2, -1), x[:, 1:].reshape(2, -1)]
    assert torch.equal(reassemble("blocks.0.attn.q", flat, [2, 3, 4]), x)  # flat column shards
    y = torch.ones(2, 4)
    assert torch.equal(reassemble("blocks.0.mlp_out", [y, y], [2, 4]), y)  # replicated
    assert torch.equal(reassemble("blocks.0.mlp_out", [y, y], [2, 4], "sum"), 2 * y)  # partial sums
    assert torch.equal(reassemble("logits", [y[None], y[None]], [2, 8]), torch.ones(2, 8))  # vocab split, batch dim
    with pytest.raises(DumpError):
        reassemble("blocks.0.mlp_out", [torch.ones(3, 4)], [2, 4])

"""Bad input: one line, a Note:, exit 2, no traceback, nothing written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from parity.loading.source import ModelSource


def _save_checkpoint(folder: Path, model: str, fmt: str = "safetensors") -> dict:
    src = ModelSource.resolve(model)
    m = src.build("cpu")
    folder.mkdir(parents=True, exist_ok=True)
    cfg = dict(src.config_dict)
    cfg["model_type"] = src.preset.model_types[0]
    (folder / "config.json").write_text(json.dumps(cfg))
    sd = {k: v.contiguous() for k, v in m.state_dict().items()}
    if fmt == "safetensors":
        save_file(sd, str(folder / "model.safetensors"))
    else:
        torch.save(sd, folder / "pytorch_model.bin")
    return sd


def _assert_usage_error(result: tuple[int, str, str], *needles: str) -> None:
    code, out, err = result
    assert code == 2, (out, err)
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("[parity")]
    assert len(lines) == 1, err
    assert lines[0].startswith("parity: error: ") and "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--model", "gpt9"], ["unknown model 'gpt9'", "Note: valid models: qwen, qwen2, llama"]),
        (["--dtype", "fp8"], ["unknown dtype 'fp8'", "Note: valid dtypes"]),
        (["--probes", "blocks.*.nothing"], ["matches no probe", "Note:"]),
        (["--prompt", "hello"], ["needs a tokenizer", "Note:"]),
        (["--candidate", "nope"], ["unknown candidate 'nope'", "Note:"]),
        (["--attn", "flash"], ["unknown attention implementation", "Note:"]),
        (["--tokens", "0"], ["at least 1 token"]),
        (["--checkpoint", "/definitely/not/here"], ["does not exist", "Note:"]),
    ],
)
def test_bad_options(args: list[str], needles: list[str], tmp_path: Path, run_cli) -> None:
    out = tmp_path / "out"
    _assert_usage_error(run_cli("run", *args, "-q", "--out", str(out)), *needles)
    assert not out.exists()


def test_cuda_without_gpu(tmp_path: Path, run_cli) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    _assert_usage_error(run_cli("run", "--device", "cuda", "-q", "--out", str(tmp_path / "o")), "no CUDA GPU", "Note:")


def test_checkpoint_not_a_folder(tmp_path: Path, run_cli) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    _assert_usage_error(run_cli("run", "--checkpoint", str(f), "-q", "--no-files"), "is not a folder")


def test_checkpoint_without_config(tmp_path: Path, run_cli) -> None:
    _assert_usage_error(run_cli("run", "--checkpoint", str(tmp_path), "-q", "--no-files"), "has no config.json")


def test_checkpoint_of_other_family(tmp_path: Path, run_cli) -> None:
    _save_checkpoint(tmp_path / "ck", "llama")
    _assert_usage_error(run_cli("run", "--model", "qwen", "--checkpoint", str(tmp_path / "ck"), "-q", "--no-files"),
                        "is a 'llama' model, not 'qwen'", "Note: use --model llama")


def test_checkpoint_without_weights(tmp_path: Path, run_cli) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    _assert_usage_error(run_cli("run", "--model", "llama", "--checkpoint", str(tmp_path), "-q", "--no-files"), "has no weights")


def test_checkpoint_missing_tensor(tmp_path: Path, run_cli) -> None:
    ck = tmp_path / "ck"
    sd = _save_checkpoint(ck, "llama")
    sd.pop("model.layers.2.mlp.up_proj.weight")
    save_file(sd, str(ck / "model.safetensors"))
    _assert_usage_error(run_cli("run", "--model", "llama", "--checkpoint", str(ck), "-q", "--no-files"),
                        "'model.layers.2.mlp.up_proj.weight' is missing")


def test_checkpoint_wrong_shape(tmp_path: Path, run_cli) -> None:
    ck = tmp_path / "ck"
    sd = _save_checkpoint(ck, "qwen")
    sd["transformer.h.1.attn.c_attn.bias"] = torch.zeros(7)
    save_file(sd, str(ck / "model.safetensors"))
    _assert_usage_error(run_cli("run", "--model", "qwen", "--checkpoint", str(ck), "-q", "--no-files"),
                        "'transformer.h.1.attn.c_attn.bias' has shape [7]")


def test_checkpoint_truncated(tmp_path: Path, run_cli) -> None:
    ck = tmp_path / "ck"
    _save_checkpoint(ck, "qwen2")
    f = ck / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    _assert_usage_error(run_cli("run", "--model", "qwen2", "--checkpoint", str(ck), "-q", "--no-files"), "model.safetensors")


def test_checkpoint_bin_pickle_refused(tmp_path: Path, run_cli) -> None:
    ck = tmp_path / "ck"
    _save_checkpoint(ck, "llama")
    (ck / "model.safetensors").unlink()
    torch.save({"weights": object()}, ck / "pytorch_model.bin")  # arbitrary pickle: refused by weights_only
    _assert_usage_error(run_cli("run", "--model", "llama", "--checkpoint", str(ck), "-q", "--no-files"), "pytorch_model.bin")


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_checkpoint_roundtrip_is_exact(fmt: str, tmp_path: Path, run_cli) -> None:
    ck = tmp_path / "ck"
    _save_checkpoint(ck, "qwen", fmt)
    code, out, _ = run_cli("run", "--model", "qwen", "--checkpoint", str(ck), "--dtype", "fp32", "--tokens", "6", "-q", "--out", str(tmp_path / "o"))
    assert code == 0, out
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["run"]["checkpoint"] == str(ck) and rep["run"]["preset"] is None


def test_input_ids_file(tmp_path: Path, run_cli) -> None:
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps([1, 2, 3, 4, 5]))
    code, _, _ = run_cli("run", "--input-ids", str(ids), "-q", "--out", str(tmp_path / "o"))
    assert code == 0
    assert json.loads((tmp_path / "o" / "report.json").read_text())["run"]["input_ids"] == [1, 2, 3, 4, 5]
    ids.write_text(json.dumps([1, 999999]))
    _assert_usage_error(run_cli("run", "--input-ids", str(ids), "-q", "--no-files"), "outside the vocabulary")


def test_shape_mismatch_names_probe_and_shapes(tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from parity.engines.torch import runner as pytorch

    original = pytorch.create

    def create(ctx):  # noqa: ANN001, ANN202
        backend = original(ctx)
        backend.model.get_submodule("transformer.h.1.mlp").register_forward_hook(lambda m, a, o: o[..., :-1])
        return backend

    monkeypatch.setattr(pytorch, "create", create)
    _assert_usage_error(run_cli("run", "--tokens", "4", "-q", "--out", str(tmp_path / "o")),
                        "'blocks.1.mlp_out' has shape [4, 128] in the reference but [4, 127]")
    assert not (tmp_path / "o").exists()

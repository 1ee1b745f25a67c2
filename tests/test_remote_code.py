"""``--trust-remote-code`` with modeling code that has the original Qwen-7B-Chat file's call
structure (tests/data/remote_qwen/modeling_qwen_layout.py: the inner model calls
``get_head_mask``, every attention registers a bool causal mask), every buffer checked against
a fresh computation, and only code inside the checkpoint loaded -- failures are one line, exit 2."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import read_report
from parity.errors import CheckpointError
from parity.loading import checkpoint as ckpt
from parity.loading import remote
from test_qwen_fidelity import remote_checkpoint

pytest.importorskip("transformers")
LAYOUT = {"model_file": "modeling_qwen_layout.py", "cls": "QWenLMHeadModel"}


def _cfg(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def _set_map(folder: Path, ref: object, key: str = "AutoModelForCausalLM") -> None:
    cfg = _cfg(folder)
    cfg["auto_map"][key] = ref
    (folder / "config.json").write_text(json.dumps(cfg))


def _one_line_exit_2(code: int, err: str) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "internal error" not in err, err


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("candidate", ["cleanroom", "torch"])
def test_the_originals_call_structure_passes(candidate: str, dtype: str, tmp_path: Path, run_cli) -> None:
    folder = remote_checkpoint(tmp_path / "ckpt", **LAYOUT)
    code, out, err = run_cli("run", "--model", "qwen", "--checkpoint", str(folder), "--trust-remote-code",
                             "--candidate", candidate, "--dtype", dtype, "--tokens", "8", "--out", str(tmp_path / "r"))
    assert code == 0, out + err
    rep = read_report(tmp_path / "r")
    ref = rep["run"]["reference"]
    assert ref["implementation"].startswith("remote code ") and ref["implementation"].endswith(".QWenLMHeadModel")
    assert any(s.startswith("get_head_mask: added to QWenPreTrainedModel") for s in ref["remote_shims"])
    assert len([p for p in rep["probes"] if p["passed"]]) == 2 * 6 + 3


def test_shims_reach_the_inner_model(tmp_path: Path) -> None:
    folder = remote_checkpoint(tmp_path / "ckpt", **LAYOUT)
    model, shims = remote.build(folder, _cfg(folder), "cpu")
    assert model.transformer.get_head_mask(None, 2) == [None, None]
    mask = torch.tensor([[1, 1, 0]])
    ext = model.transformer.invert_attention_mask(mask)
    assert ext.shape == (1, 1, 1, 3) and ext[0, 0, 0, 2] == torch.finfo(torch.float32).min and ext[0, 0, 0, 0] == 0
    assert {s.split(":")[0] for s in shims} >= {"get_head_mask", "invert_attention_mask", "get_extended_attention_mask"}


def _corrupting(name: str, value: torch.Tensor):
    """apply_state_dict, then the buffer overwritten -- what meta-device materialization leaves behind."""
    real = ckpt.apply_state_dict

    def apply(model, sd, where):
        real(model, sd, where)
        with torch.no_grad():
            dict(model.named_buffers())[name].copy_(value)
    return apply


def test_a_garbage_bool_mask_is_refused_by_name(tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = remote_checkpoint(tmp_path / "ckpt", **LAYOUT)
    garbage = torch.rand(1, 1, 128, 128, generator=torch.Generator().manual_seed(0)) > 0.5
    monkeypatch.setattr(ckpt, "apply_state_dict", _corrupting("transformer.h.1.attn.bias", garbage))
    for candidate in ("torch", "cleanroom"):
        code, _, err = run_cli("run", "--model", "qwen", "--checkpoint", str(folder), "--trust-remote-code",
                               "--candidate", candidate, "--tokens", "8", "-q", "--no-files")
        _one_line_exit_2(code, err)
        assert "buffer 'transformer.h.1.attn.bias' (bool [1, 1, 128, 128])" in err and "Note:" in err


def test_a_garbage_buffer_saved_in_the_checkpoint_is_refused(tmp_path: Path) -> None:
    """A persistent buffer whose saved value is not what __init__ computes (saved after a bad load)."""
    folder = remote_checkpoint(tmp_path / "ckpt", **LAYOUT)
    src = (folder / "modeling_qwen_layout.py").read_text()
    (folder / "modeling_qwen_layout.py").write_text(src.replace("torch.tensor(-1e4), persistent=False",
                                                                "torch.tensor(-1e4), persistent=True"))
    sd = ckpt.load_state_dict(folder)
    sd.update({f"transformer.h.{i}.attn.masked_bias": torch.tensor(-1e4) for i in range(2)})
    sd["transformer.h.0.attn.masked_bias"] = torch.tensor(3.0e38)
    from safetensors.torch import save_file

    save_file(sd, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"buffer 'transformer\.h\.0\.attn\.masked_bias' .*checkpoint holds it"):
        remote.build(folder, _cfg(folder), "cpu")


def test_a_buffer_init_does_not_determine_is_refused() -> None:
    model = torch.nn.Module()
    model.register_buffer("m", torch.ones(4, dtype=torch.bool))
    remote.verify_buffers(model, {"m": torch.ones(4, dtype=torch.bool)}, {}, "x")
    with pytest.raises(CheckpointError, match="buffer 'm' .*uninitialized memory"):
        remote.verify_buffers(model, {"m": torch.tensor([True, False, True, True])}, {}, "x")


@pytest.mark.parametrize(("ref", "words"), [
    ("/tmp/evil.QWenLMHeadModel", "a path, not 'module.Class'"),
    ("../evil.QWenLMHeadModel", "a path, not 'module.Class'"),
    ("sub/modeling.QWenLMHeadModel", "a path, not 'module.Class'"),
    ("someone/other-repo--modeling.QWenLMHeadModel", "code from another repository"),
    ("modeling_absent.QWenLMHeadModel", "'modeling_absent.py', which is not in the checkpoint folder"),
])
def test_only_code_inside_the_checkpoint_loads(ref: str, words: str, tmp_path: Path, run_cli) -> None:
    folder = remote_checkpoint(tmp_path / "ckpt", **LAYOUT)
    _set_map(folder, ref)
    code, _, err = run_cli("run", "--model", "qwen", "--checkpoint", str(folder), "--trust-remote-code",
                           "-q", "--no-files")
    _one_line_exit_2(code, err)
    assert words in err and "Note:" in err


def test_a_config_class_outside_the_checkpoint_is_refused(tmp_path: Path, run_cli) -> None:
    folder = remote_checkpoint(tmp_path / "ckpt", **LAYOUT)
    _set_map(folder, "../../configuration_tinyqwen.TinyQWenConfig", key="AutoConfig")
    code, _, err = run_cli("run", "--model", "qwen", "--checkpoint", str(folder), "--trust-remote-code",
                           "-q", "--no-files")
    _one_line_exit_2(code, err)
    assert "auto_map.AutoConfig" in err


@pytest.mark.parametrize(("edit", "words"), [
    (lambda s: "raise RuntimeError('needs a GPU')\n" + s, "failed on import: RuntimeError: needs a GPU"),
    (lambda s: "import sys\nsys.exit(4)\n" + s, "failed on import: SystemExit: 4"),
    (lambda s: s.replace("class QWenLMHeadModel(", "class Renamed("), "has no class for auto_map"),
    (lambda s: s.replace("        self.transformer = QWenModel(config)\n",
                         "        raise ValueError('unsupported config')\n"),
     "failed while building QWenLMHeadModel: ValueError: unsupported config"),
])
def test_remote_code_failures_are_one_line(edit, words: str, tmp_path: Path, run_cli) -> None:
    folder = remote_checkpoint(tmp_path / "ckpt", **LAYOUT)
    path = folder / "modeling_qwen_layout.py"
    path.write_text(edit(path.read_text()))
    code, _, err = run_cli("run", "--model", "qwen", "--checkpoint", str(folder), "--trust-remote-code",
                           "-q", "--no-files")
    _one_line_exit_2(code, err)
    assert words in err and "Note:" in err


ORIGINAL = os.environ.get("PARITY_QWEN_ORIGINAL_CKPT")


@pytest.mark.slow
@pytest.mark.skipif(not ORIGINAL, reason="set PARITY_QWEN_ORIGINAL_CKPT to a tiny checkpoint holding the original "
                                         "Qwen-7B-Chat modeling_qwen.py (not redistributed with parity)")
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("candidate", ["cleanroom", "torch"])
def test_the_original_file(candidate: str, dtype: str, run_cli) -> None:
    pytest.importorskip("einops")
    code, out, err = run_cli("run", "--model", "qwen", "--checkpoint", str(ORIGINAL), "--trust-remote-code",
                             "--candidate", candidate, "--dtype", dtype, "--tokens", "8", "-q", "--no-files")
    assert code == 0, out + err

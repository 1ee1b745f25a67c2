"""Qwen v1 as the original computes it -- in every dtype, with the original's class defaults
and layout -- and ``--trust-remote-code`` loading exactly what a checkpoint holds."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import read_report
from parity.loading import checkpoint as ckpt
from parity.loading import remote
from parity.loading.source import ModelSource
from parity.errors import CheckpointError
from parity.models.qwen import QWenConfig, QWenLMHeadModel
from parity.models.qwen import modeling

FIXTURE = Path(__file__).parent / "data" / "remote_qwen"


def original_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The original's eager attention, written from its description
    (docs/contributing/families.md): scores over a 0-d tensor sqrt(d) *in the scores' dtype*,
    causal mask at the dtype's min, softmax in the activation dtype."""
    w = torch.matmul(q, k.transpose(-1, -2))
    w = w / torch.full([], v.size(-1) ** 0.5, dtype=w.dtype, device=w.device)
    t, s = q.shape[-2], k.shape[-2]
    keep = torch.ones(s, s, dtype=torch.bool, device=q.device).tril()[s - t:]
    w = torch.where(keep, w, torch.full([], torch.finfo(w.dtype).min, dtype=w.dtype, device=w.device))
    return torch.matmul(torch.softmax(w, dim=-1), v)


def head128(dtype: torch.dtype) -> QWenLMHeadModel:
    torch.manual_seed(0)
    cfg = QWenConfig(vocab_size=512, n_embd=256, n_head=2, kv_channels=128, n_layer=2, ffn_hidden_size=512, seq_length=64)
    model = QWenLMHeadModel(cfg)
    model.reset_parameters(std=0.05)
    return model.to(dtype).eval()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_attention_scale_is_the_originals_at_head_dim_128(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    model = head128(dtype)
    ids = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(ids).logits
        monkeypatch.setattr(modeling, "eager_attention", original_attention)
        original = model(ids).logits
        monkeypatch.setattr(modeling, "eager_attention", _exact_scale)
        exact = model(ids).logits
    assert torch.equal(ours, original)
    assert not torch.equal(exact, original)  # 11.3137 instead of the dtype's 11.3125 (bf16) is visible
    scales = []  # SDPA gets the same scale value (its own kernel rounds differently)
    real = modeling.F.scaled_dot_product_attention
    monkeypatch.setattr(modeling.F, "scaled_dot_product_attention", lambda *a, **k: scales.append(k["scale"]) or real(*a, **k))
    model.attn_implementation = "sdpa"
    with torch.no_grad():
        model(ids)
    assert scales and all(x == 1.0 / float(torch.tensor(128 ** 0.5, dtype=dtype)) for x in scales)


def _exact_scale(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    w = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    t, s = q.shape[-2], k.shape[-2]
    keep = torch.ones(s, s, dtype=torch.bool, device=q.device).tril()[s - t:]
    return torch.matmul(torch.softmax(w.masked_fill(~keep, torch.finfo(w.dtype).min), dim=-1), v)


def test_fp32_scale_unchanged() -> None:
    q, k, v = (torch.randn(1, 2, 8, 128, generator=torch.Generator().manual_seed(i)) for i in range(3))
    assert torch.equal(modeling.eager_attention(q, k, v), _exact_scale(q, k, v))


def test_lm_head_has_vocab_size_rows_and_a_padded_checkpoint_loads(tmp_path: Path) -> None:
    cfg = dict(vocab_size=900, padded_vocab_size=1000, n_embd=64, n_head=4, n_layer=1, ffn_hidden_size=128,
               seq_length=32, model_type="qwen")
    torch.manual_seed(0)
    model = QWenLMHeadModel(QWenConfig.from_dict(cfg))
    assert model.transformer.wte.weight.shape == (1000, 64) and model.lm_head.weight.shape == (900, 64)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    built = ModelSource.resolve("qwen", tmp_path).build("cpu")
    assert torch.equal(built.lm_head.weight, model.lm_head.weight)


def test_config_defaults_are_the_original_classs() -> None:
    cfg = QWenConfig.from_dict({"n_embd": 64, "n_head": 4, "n_layer": 1, "ffn_hidden_size": 128, "vocab_size": 100})
    assert (cfg.layer_norm_epsilon, cfg.use_dynamic_ntk, cfg.use_logn_attn) == (1e-5, False, False)
    assert QWenConfig.__dataclass_fields__["vocab_size"].default == 151851


def test_7b_shape_is_qwen_7b_chat() -> None:
    cfg = ModelSource.resolve("qwen", shape="7b").config
    assert (cfg.seq_length, cfg.layer_norm_epsilon, cfg.max_position_embeddings) == (2048, 1e-6, 6144)
    assert (cfg.n_embd, cfg.n_layer, cfg.head_dim, cfg.intermediate_size) == (4096, 32, 128, 11008)
    assert cfg.use_dynamic_ntk and cfg.use_logn_attn


# --------------------------------------------------------------------------- remote code


def remote_checkpoint(folder: Path, model_file: str = "modeling_tinyqwen.py", cls: str = "TinyQWenLMHeadModel") -> Path:
    """A checkpoint with its own modeling code (auto_map), holding seeded clean-room weights."""
    folder.mkdir(parents=True)
    cfg = {"model_type": "qwen", "architectures": ["TinyQWenLMHeadModel"], "vocab_size": 1000, "n_embd": 64,
           "n_head": 4, "kv_channels": 16, "n_layer": 2, "ffn_hidden_size": 344, "layer_norm_epsilon": 1e-6,
           "seq_length": 64, "use_dynamic_ntk": False, "use_logn_attn": False, "no_bias": True,
           "auto_map": {"AutoConfig": "configuration_tinyqwen.TinyQWenConfig",
                        "AutoModelForCausalLM": f"{Path(model_file).stem}.{cls}"}}
    (folder / "config.json").write_text(json.dumps(cfg))
    shutil.copy(FIXTURE / "configuration_tinyqwen.py", folder)
    shutil.copy(FIXTURE / model_file, folder)
    torch.manual_seed(3)
    model = QWenLMHeadModel(QWenConfig.from_dict(cfg))
    model.reset_parameters(std=0.1)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


def test_remote_code_loads_what_the_checkpoint_holds(tmp_path: Path, run_cli) -> None:
    """Against the clean-room on the same weights: identical, probe for probe, in float32."""
    folder = remote_checkpoint(tmp_path / "ckpt")
    code, out, err = run_cli("run", "--model", "qwen", "--checkpoint", str(folder), "--trust-remote-code",
                             "--candidate", "cleanroom", "--dtype", "fp32", "--tokens", "8", "--out", str(tmp_path / "r"))
    rep = read_report(tmp_path / "r")
    assert code == 0, out + err
    compared = [p for p in rep["probes"] if p["passed"] is not None]
    assert len(compared) == 2 * 6 + 3 and all(p["max_abs_err"] == 0.0 for p in compared)
    assert {p["name"] for p in rep["probes"] if p["status"] == "not exposed"} == set()  # the reference's map
    ref, cand = rep["run"]["reference"], rep["run"]["candidate"]
    assert ref["trust_remote_code"] is True and ref["implementation"].startswith("remote code ")
    assert cand["implementation"] == "parity.models.qwen.modeling.QWenLMHeadModel"
    assert any(s.startswith("transformers_stream_generator") for s in ref["remote_shims"])
    assert any(s.startswith("get_head_mask") for s in ref["remote_shims"])


def test_transformers_from_pretrained_would_load_wrong(tmp_path: Path) -> None:
    """Why parity does not use it: the traps bite (or it does not load at all)."""
    from transformers import AutoModelForCausalLM

    folder = remote_checkpoint(tmp_path / "ckpt")
    sd = ckpt.load_state_dict(folder)
    with remote._stand_ins([]):
        try:
            model = AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=True, dtype=torch.float32)
        except Exception:  # noqa: BLE001 - not loading at all is also a reason
            return
    # transformers 5.24: the non-persistent buffer is uninitialized memory, c_proj re-initialized
    assert not torch.equal(model.logit_scale, torch.ones(())) or not torch.equal(
        model.transformer.h[0].attn.c_proj.weight, sd["transformer.h.0.attn.c_proj.weight"])
    with pytest.raises(CheckpointError, match="differs from the checkpoint"):
        remote.verify_loaded(model, sd, str(folder))


def test_verification_names_a_tensor_the_code_changed(tmp_path: Path) -> None:
    folder = remote_checkpoint(tmp_path / "ckpt")
    model, _ = remote.build(folder, json.loads((folder / "config.json").read_text()), "cpu")
    sd = ckpt.load_state_dict(folder)
    remote.verify_loaded(model, sd, "x")
    with torch.no_grad():
        model.transformer.h[1].attn.c_proj.weight.mul_(1.001)
    with pytest.raises(CheckpointError, match=r"transformer\.h\.1\.attn\.c_proj\.weight' differs"):
        remote.verify_loaded(model, sd, "x")
    with torch.no_grad():
        model.logit_scale.fill_(float("nan"))
    model.transformer.h[1].attn.c_proj.weight.data.copy_(sd["transformer.h.1.attn.c_proj.weight"])
    with pytest.raises(CheckpointError, match="logit_scale' holds non-finite"):
        remote.verify_loaded(model, sd, "x")


def test_missing_package_of_the_remote_code_is_named(tmp_path: Path, run_cli) -> None:
    src = (FIXTURE / "modeling_tinyqwen.py").read_text().replace(
        "import transformers_stream_generator  # noqa", "import parity_no_such_package  # noqa")
    (tmp_path / "modeling_needs.py").write_text(src)
    folder = tmp_path / "ckpt"
    remote_checkpoint(folder, model_file="modeling_tinyqwen.py")
    shutil.copy(tmp_path / "modeling_needs.py", folder / "modeling_needs.py")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"]["AutoModelForCausalLM"] = "modeling_needs.TinyQWenLMHeadModel"
    (folder / "config.json").write_text(json.dumps(cfg))
    code, _, err = run_cli("run", "--model", "qwen", "--checkpoint", str(folder), "--trust-remote-code", "--tokens", "4",
                           "-q", "--no-files")
    assert code == 2 and "parity_no_such_package" in err and len(err.strip().splitlines()) == 1


def test_no_auto_map_is_a_usage_error(tmp_path: Path, run_cli) -> None:
    folder = remote_checkpoint(tmp_path / "ckpt")
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["auto_map"]
    (folder / "config.json").write_text(json.dumps(cfg))
    code, _, err = run_cli("run", "--model", "qwen", "--checkpoint", str(folder), "--trust-remote-code", "-q", "--no-files")
    assert code == 2 and "no remote code to trust" in err


# --------------------------------------------------------------------------- .bin files


class Pickled:
    pass


@pytest.mark.parametrize(("value", "words"), [
    (3, "'lm_head.weight' is not a tensor (int)"),
    (Pickled(), f"a pickled '{__name__}.Pickled' object"),
])
def test_bad_bin_values_are_one_clean_line(value: object, words: str, tmp_path: Path, run_cli) -> None:
    folder = remote_checkpoint(tmp_path / "ckpt")
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["auto_map"]
    (folder / "config.json").write_text(json.dumps(cfg))
    sd = ckpt.load_state_dict(folder)
    (folder / "model.safetensors").unlink()
    torch.save({**sd, "lm_head.weight": value}, folder / "pytorch_model.bin")
    code, _, err = run_cli("run", "--model", "qwen", "--checkpoint", str(folder), "-q", "--no-files")
    assert code == 2 and words in err, err
    assert len(err.strip().splitlines()) == 1 and "\x1b[" not in err

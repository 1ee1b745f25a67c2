"""Properties of the clean-room Qwen v1 model (parity.models.qwen), checked against direct
computations of the original's measured facts (docs/contributing/families.md), not against the model itself."""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from parity.errors import InputError, ParityError
from parity.models.qwen import QWenCache, QWenConfig, QWenLMHeadModel, ntk_alpha_for_length

H, HEADS, LAYERS, FFN, VOCAB = 64, 4, 2, 2 * 96, 512
HEAD_DIM = H // HEADS


def tiny_config(**overrides: Any) -> QWenConfig:
    base: dict[str, Any] = dict(
        n_embd=H, n_head=HEADS, n_layer=LAYERS, ffn_hidden_size=FFN, vocab_size=VOCAB,
        seq_length=8, use_dynamic_ntk=True, use_logn_attn=True,  # Qwen-7B-Chat's (not the class defaults)
    )
    base.update(overrides)
    return QWenConfig(**base)


def tiny_model(seed: int = 0, **overrides: Any) -> QWenLMHeadModel:
    torch.manual_seed(seed)
    model = QWenLMHeadModel(tiny_config(**overrides))
    model.reset_parameters(std=0.15)
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.bias.normal_(std=0.3)
            block.ln_1.weight.uniform_(0.5, 1.5)
    return model.eval()


def ids(length: int, seed: int = 1, batch: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=gen)


@contextmanager
def capture(model: torch.nn.Module, *names: str) -> Iterator[dict[str, Any]]:
    """Record the forward output of the named submodules; hooks always removed."""
    seen: dict[str, Any] = {}
    modules = dict(model.named_modules())
    handles = []
    for name in names:
        def hook(_m: Any, _i: Any, out: Any, name: str = name) -> None:
            seen[name] = out
        handles.append(modules[name].register_forward_hook(hook))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def direct_tables(base: float, d: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin in float64, rotate-half layout: cat(freqs, freqs)."""
    inv = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    freqs = torch.outer(torch.arange(length, dtype=torch.float64), inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def direct_rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, h, d]; pairs are (i, i + rd/2) of the first rd channels."""
    rd = cos.shape[-1]
    x = x.double()
    c, s = cos.double()[None, :, None, :], sin.double()[None, :, None, :]
    x1, x2, rest = x[..., : rd // 2], x[..., rd // 2 : rd], x[..., rd:]
    half = rd // 2
    out1 = x1 * c[..., :half] - x2 * s[..., :half]
    out2 = x2 * c[..., half:] + x1 * s[..., half:]
    return torch.cat((out1, out2, rest), dim=-1)


# --------------------------------------------------------------------------- naming


def expected_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"transformer.wte.weight": (VOCAB, H)}
    for i in range(LAYERS):
        p = f"transformer.h.{i}."
        shapes.update({
            p + "ln_1.weight": (H,),
            p + "attn.c_attn.weight": (3 * H, H),
            p + "attn.c_attn.bias": (3 * H,),
            p + "attn.c_proj.weight": (H, H),
            p + "ln_2.weight": (H,),
            p + "mlp.w1.weight": (FFN // 2, H),
            p + "mlp.w2.weight": (FFN // 2, H),
            p + "mlp.c_proj.weight": (H, FFN // 2),
        })
    shapes["transformer.ln_f.weight"] = (H,)
    shapes["lm_head.weight"] = (VOCAB, H)
    return shapes


def test_state_dict_keys_and_shapes_match_qwen_checkpoint_names() -> None:
    got = {k: tuple(v.shape) for k, v in tiny_model().state_dict().items()}
    assert got == expected_shapes()


def test_padded_vocab_size_sets_embedding_rows_only() -> None:
    """As the original: wte has padded_vocab_size rows, lm_head vocab_size."""
    cfg = tiny_config(padded_vocab_size=640)
    model = QWenLMHeadModel(cfg)
    assert model.transformer.wte.weight.shape == (640, H)
    assert model.lm_head.weight.shape == (cfg.vocab_size, H) and cfg.vocab_size < 640


def test_handbuilt_state_dict_loads_strict_and_is_used() -> None:
    gen = torch.Generator().manual_seed(7)
    sd = {k: torch.randn(s, generator=gen) * 0.2 for k, s in expected_shapes().items()}
    model = QWenLMHeadModel(tiny_config()).eval()
    model.load_state_dict(sd, strict=True)
    assert torch.equal(model.transformer.h[1].mlp.w2.weight, sd["transformer.h.1.mlp.w2.weight"])
    x = ids(6)
    before = model(x).logits
    sd2 = dict(sd, **{"transformer.h.1.mlp.w2.weight": sd["transformer.h.1.mlp.w2.weight"] * 2})
    model.load_state_dict(sd2, strict=True)
    assert not torch.allclose(model(x).logits, before, atol=1e-4)
    with pytest.raises(RuntimeError):
        model.load_state_dict(dict(sd, **{"transformer.h.0.mlp.c_proj.bias": torch.zeros(H)}))


def test_block_and_attention_return_tuples_hidden_first() -> None:
    model = tiny_model()
    with capture(model, "transformer.h.0", "transformer.h.0.attn") as seen:
        model(ids(5))
    block_out, attn_out = seen["transformer.h.0"], seen["transformer.h.0.attn"]
    assert isinstance(block_out, tuple) and block_out[0].shape == (2, 5, H)
    assert block_out[1] is None and attn_out[0].shape == (2, 5, H)
    with capture(model, "transformer.h.0") as seen:
        model(ids(5), use_cache=True)
    k, v = seen["transformer.h.0"][1]
    assert k.shape == v.shape == (2, 5, HEADS, HEAD_DIM)


def test_pre_norm_blocks_compose_into_logits() -> None:
    model = tiny_model()
    x = ids(6)
    tr = model.transformer
    positions = torch.arange(6)
    with torch.no_grad():
        rope = tr.rotary_emb(positions)
        h = tr.wte(x)
        for block in tr.h:
            attn_out = block.attn(block.ln_1(h), rope, positions)[0]
            mid = h + attn_out
            expected = mid + block.mlp(block.ln_2(mid))
            torch.testing.assert_close(block(h, rope, positions)[0], expected, rtol=0, atol=0)
            h = expected
        logits = model.lm_head(tr.ln_f(h))
        torch.testing.assert_close(model(x).logits, logits, rtol=0, atol=1e-6)
        post_norm = h + block.ln_2(block.mlp(mid))
        assert (post_norm - expected).abs().max() > 1e-3


# --------------------------------------------------------------------------- MLP / norm


def test_silu_is_on_w2_branch() -> None:
    mlp = tiny_model().transformer.h[0].mlp
    x = torch.randn(2, 5, H)
    with torch.no_grad():
        got = mlp(x)
        expected = mlp.c_proj(mlp.w1(x) * F.silu(mlp.w2(x)))
        swapped = mlp.c_proj(F.silu(mlp.w1(x)) * mlp.w2(x))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert (got - swapped).abs().max() > 1e-2


def test_rmsnorm_eps_inside_root() -> None:
    model = tiny_model(layer_norm_epsilon=0.25)
    ln = model.transformer.h[0].ln_1
    x = torch.randn(3, H, dtype=torch.float64) * 0.3
    w = ln.weight.detach().double()
    with torch.no_grad():
        got = ln(x.float()).double()
    inside = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 0.25) * w
    outside = x / (torch.sqrt((x**2).mean(-1, keepdim=True)) + 0.25) * w
    torch.testing.assert_close(got, inside, rtol=1e-6, atol=1e-6)
    assert (got - outside).abs().max() > 1e-2
    with torch.no_grad():
        assert ln.to(torch.bfloat16)(x.bfloat16()).dtype == torch.bfloat16


# --------------------------------------------------------------------------- attention


def test_fused_qkv_split_order_is_q_k_v() -> None:
    model = tiny_model()
    p = "transformer.h.1.attn"
    hooks = [p + ".hook_q", p + ".hook_k", p + ".hook_v"]
    with capture(model, "transformer.h.1.ln_1", *hooks) as seen:
        model(ids(5))
    x = seen["transformer.h.1.ln_1"].double()
    attn = model.transformer.h[1].attn
    w, b = attn.c_attn.weight.detach().double(), attn.c_attn.bias.detach().double()
    for j, name in enumerate(("hook_q", "hook_k", "hook_v")):
        rows = slice(j * H, (j + 1) * H)
        expected = (x @ w[rows].T + b[rows]).view(2, 5, HEADS, HEAD_DIM)
        torch.testing.assert_close(seen[f"{p}.{name}"].double(), expected, rtol=1e-5, atol=1e-5)


def rope_of(model: QWenLMHeadModel, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    with capture(model, "transformer.rotary_emb") as seen, torch.no_grad():
        model(ids(length))
    cos, sin = seen["transformer.rotary_emb"]
    assert cos.dtype == torch.float32 and cos.shape == (length, model.config.rotary_dim)
    return cos, sin


def test_rotary_base_comes_from_config() -> None:
    cos_a, sin_a = rope_of(tiny_model(rotary_emb_base=10000.0), 6)
    cos_b, _ = rope_of(tiny_model(rotary_emb_base=50.0), 6)
    for base, cos in ((10000.0, cos_a), (50.0, cos_b)):
        exp_cos, exp_sin = direct_tables(base, HEAD_DIM, 6)
        torch.testing.assert_close(cos.double(), exp_cos, rtol=0, atol=1e-6)
    exp_sin = direct_tables(10000.0, HEAD_DIM, 6)[1]
    torch.testing.assert_close(sin_a.double(), exp_sin, rtol=0, atol=1e-6)
    assert (cos_a - cos_b).abs().max() > 1e-2


def rotated(model: QWenLMHeadModel, length: int, block: int = 0) -> dict[str, Any]:
    p = f"transformer.h.{block}.attn"
    names = ["transformer.rotary_emb"] + [f"{p}.hook_{n}" for n in ("q", "k", "q_rot", "k_rot")]
    with capture(model, *names) as seen, torch.no_grad():
        model(ids(length))
    return {n.rsplit(".", 1)[-1]: v for n, v in seen.items()}


def test_rotate_half_layout() -> None:
    model = tiny_model()
    seen = rotated(model, 6)
    cos, sin = direct_tables(model.config.rotary_emb_base, HEAD_DIM, 6)
    for src, dst in (("hook_q", "hook_q_rot"), ("hook_k", "hook_k_rot")):
        expected = direct_rotate(seen[src], cos, sin)
        torch.testing.assert_close(seen[dst].double(), expected, rtol=1e-5, atol=1e-5)
    # An interleaved (GPT-J style) layout gives something else.
    q = seen["hook_q"].double()
    inter_cos = cos[:, : HEAD_DIM // 2].repeat_interleave(2, -1)[None, :, None, :]
    inter_sin = sin[:, : HEAD_DIM // 2].repeat_interleave(2, -1)[None, :, None, :]
    q_pair = torch.stack((-q[..., 1::2], q[..., ::2]), dim=-1).flatten(-2)
    interleaved = q * inter_cos + q_pair * inter_sin
    assert (seen["hook_q_rot"].double() - interleaved).abs().max() > 1e-2


def test_partial_rotary_pct_leaves_tail_untouched() -> None:
    model = tiny_model(rotary_pct=0.5)
    rd = HEAD_DIM // 2
    assert model.config.rotary_dim == rd
    seen = rotated(model, 6)
    cos, sin = seen["rotary_emb"]
    assert cos.shape == (6, rd)
    torch.testing.assert_close(cos.double(), direct_tables(10000.0, rd, 6)[0], rtol=0, atol=1e-6)
    q, q_rot = seen["hook_q"], seen["hook_q_rot"]
    assert torch.equal(q_rot[..., rd:], q[..., rd:])
    torch.testing.assert_close(q_rot.double(), direct_rotate(q, cos, sin), rtol=1e-5, atol=1e-5)
    assert (q_rot[..., :rd] - q[..., :rd]).abs().max() > 1e-2


def test_dynamic_ntk_alpha_formula() -> None:
    cases = {1: 1.0, 4: 1.0, 8: 1.0, 9: 3.0, 16: 3.0, 17: 7.0, 20: 7.0, 32: 7.0, 33: 15.0}
    assert {n: ntk_alpha_for_length(n, 8) for n in cases} == cases


def test_dynamic_ntk_changes_every_position_beyond_seq_length() -> None:
    model = tiny_model()
    d, base = HEAD_DIM, model.config.rotary_emb_base
    cos8, sin8 = rope_of(model, 8)
    torch.testing.assert_close(cos8.double(), direct_tables(base, d, 8)[0], rtol=0, atol=1e-6)
    cos20, sin20 = rope_of(model, 20)
    alpha = 2 ** math.ceil(math.log2(20 / 8) + 1) - 1
    ntk_cos, ntk_sin = direct_tables(base * alpha ** (d / (d - 2)), d, 20)
    torch.testing.assert_close(cos20.double(), ntk_cos, rtol=0, atol=2e-6)
    torch.testing.assert_close(sin20.double(), ntk_sin, rtol=0, atol=2e-6)
    # Every position > 0 differs from the plain table, including those before seq_length.
    diff = (cos20[:8] - cos8).abs().amax(-1)
    assert diff[0] == 0 and bool((diff[1:] > 1e-4).all())
    # ...so the first 8 logits of a 20-token prompt differ from those of its 8-token prefix.
    x = ids(20)
    with torch.no_grad():
        assert (model(x).logits[:, :8] - model(x[:, :8]).logits).abs().max() > 1e-4
    model.train()  # eval only
    plain20 = direct_tables(base, d, 20)[0]
    torch.testing.assert_close(rope_of(model, 20)[0].double(), plain20, rtol=0, atol=1e-6)
    model.eval()
    no_ntk = rope_of(tiny_model(use_dynamic_ntk=False), 20)[0]
    torch.testing.assert_close(no_ntk.double(), plain20, rtol=0, atol=1e-6)


def test_logn_scales_q_from_seq_length_on() -> None:
    model = tiny_model()
    seen = rotated(model, 20, block=1)
    cos, sin = seen["rotary_emb"]
    plain_q = direct_rotate(seen["hook_q"], cos, sin)
    q_rot = seen["hook_q_rot"].double()
    factor = torch.tensor([math.log(p + 1) / math.log(8) if p >= 8 else 1.0 for p in range(20)])
    expected = plain_q * factor.double()[None, :, None, None]
    torch.testing.assert_close(q_rot, expected, rtol=1e-5, atol=1e-5)
    # Exactly 1 before seq_length: identical to the unscaled computation in float32.
    no_logn = rotated(tiny_model(use_logn_attn=False), 20, block=1)
    assert torch.equal(seen["hook_q_rot"][:, :8], no_logn["hook_q_rot"][:, :8])
    assert (seen["hook_q_rot"][:, 8:] - no_logn["hook_q_rot"][:, 8:]).abs().max() > 1e-3
    # k is not scaled.
    k_expected = direct_rotate(seen["hook_k"], cos, sin)
    torch.testing.assert_close(seen["hook_k_rot"].double(), k_expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- end to end


def test_eager_and_sdpa_agree() -> None:
    model = tiny_model()
    x = ids(20)
    with torch.no_grad():
        eager = model(x).logits
        model.attn_implementation = "sdpa"
        sdpa = model(x).logits
    assert all(b.attn.attn_implementation == "sdpa" for b in model.transformer.h)
    torch.testing.assert_close(sdpa, eager, rtol=0, atol=1e-5)
    with pytest.raises(ParityError):
        model.attn_implementation = "flash"
    assert QWenLMHeadModel(tiny_config(), attn_implementation="sdpa").attn_implementation == "sdpa"


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_causal_and_attention_mask_ignored(impl: str) -> None:
    model = tiny_model()
    model.attn_implementation = impl
    x = ids(12)
    y = x.clone()
    y[:, 7] = (y[:, 7] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(x).logits, model(y).logits
        masked = model(x, attention_mask=torch.zeros_like(x)).logits
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=1e-6)
    assert (a[:, 7:] - b[:, 7:]).abs().amax(dim=(0, 2)).min() > 1e-4
    assert torch.equal(masked, a)


def decode(
    model: QWenLMHeadModel, x: torch.Tensor, prefill: int, cache_type: type = QWenCache
) -> tuple[torch.Tensor, Any]:
    """Prefill ``prefill`` tokens, then feed the rest one at a time through the cache."""
    with torch.no_grad():
        out = model(x[:, :prefill], use_cache=True)
        logits, cache = [out.logits], out.past_key_values
        if cache_type is list:
            cache = list(cache)
        for t in range(prefill, x.shape[1]):
            out = model(x[:, t : t + 1], past_key_values=cache, use_cache=True)
            logits.append(out.logits)
            cache = out.past_key_values
    return torch.cat(logits, dim=1), cache


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_kv_cache_decode_matches_full_forward(impl: str) -> None:
    model = tiny_model()
    model.attn_implementation = impl
    x = ids(16)  # prefill 10 and full 16 both give alpha 3; positions 8.. get logN
    with torch.no_grad():
        full = model(x).logits
    stepped, cache = decode(model, x, prefill=10)
    assert isinstance(cache, QWenCache) and cache.ntk_alpha == 3.0 and cache.seq_len == 16
    assert cache[0][0].shape == (2, 16, HEADS, HEAD_DIM)
    torch.testing.assert_close(stepped, full, rtol=0, atol=1e-5)
    from_list, _ = decode(model, x, prefill=10, cache_type=list)
    torch.testing.assert_close(from_list, full, rtol=0, atol=1e-5)


def test_decode_keeps_prefill_ntk_alpha() -> None:
    model = tiny_model()
    x = ids(12)
    stepped, cache = decode(model, x, prefill=4)  # prefill alpha 1, kept while decoding to 12
    assert cache.ntk_alpha == 1.0
    no_ntk = tiny_model(use_dynamic_ntk=False)
    with torch.no_grad():
        torch.testing.assert_close(stepped, no_ntk(x).logits, rtol=0, atol=1e-5)
        assert (stepped - model(x).logits).abs().max() > 1e-4  # full 12-token prefill: alpha 3


def test_bf16_applies_rotary_in_float32() -> None:
    model = tiny_model(use_logn_attn=False).to(torch.bfloat16)
    seen = rotated(model, 8)
    cos, sin = seen["rotary_emb"]
    assert cos.dtype == torch.float32 and seen["hook_q_rot"].dtype == torch.bfloat16
    assert torch.equal(cos, rope_of(tiny_model(), 8)[0])
    # Rotating in float32 then rounding once agrees with the exact result rounded to bf16
    # nearly everywhere; rotating in bf16 arithmetic would round several times.
    exact = direct_rotate(seen["hook_q"], cos, sin).to(torch.bfloat16)
    mismatch = (seen["hook_q_rot"] != exact).float().mean().item()
    assert mismatch < 0.01


# --------------------------------------------------------------------------- config


QWEN_7B_CHAT_CONFIG: dict[str, Any] = {
    "architectures": ["QWenLMHeadModel"],
    "auto_map": {
        "AutoConfig": "configuration_qwen.QWenConfig",
        "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel",
    },
    "attn_dropout_prob": 0.0,
    "bf16": False,
    "emb_dropout_prob": 0.0,
    "fp16": False,
    "fp32": False,
    "hidden_size": 4096,
    "intermediate_size": 22016,
    "initializer_range": 0.02,
    "kv_channels": 128,
    "layer_norm_epsilon": 1e-06,
    "max_position_embeddings": 8192,
    "model_type": "qwen",
    "no_bias": True,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "n_embd": 4096,
    "n_head": 32,
    "n_layer": 32,
    "ffn_hidden_size": 22016,
    "onnx_safe": None,
    "rotary_emb_base": 10000,
    "rotary_pct": 1.0,
    "scale_attn_weights": True,
    "seq_length": 8192,
    "tie_word_embeddings": False,
    "tokenizer_class": "QWenTokenizer",
    "transformers_version": "4.32.0",
    "use_cache": True,
    "use_dynamic_ntk": True,
    "use_flash_attn": "auto",
    "use_logn_attn": True,
    "vocab_size": 151936,
}


def test_from_dict_real_qwen_7b_chat_config() -> None:
    cfg = QWenConfig.from_dict(QWEN_7B_CHAT_CONFIG)
    assert cfg.intermediate_size == 11008 and cfg.head_dim == 128 and cfg.rotary_dim == 128
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (4096, 32, 32)
    assert cfg.seq_length == 8192 and cfg.layer_norm_epsilon == 1e-6
    assert cfg.rotary_emb_base == 10000.0 and cfg.embedding_rows == 151936
    assert cfg.use_dynamic_ntk and cfg.use_logn_attn and cfg.no_bias
    assert QWenConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("key", ["n_embd", "n_head", "n_layer", "ffn_hidden_size", "vocab_size"])
def test_from_dict_names_missing_key(key: str) -> None:
    d = {k: v for k, v in QWEN_7B_CHAT_CONFIG.items() if k != key}
    with pytest.raises(ValueError, match=key) as info:
        QWenConfig.from_dict(d)
    assert isinstance(info.value, ParityError)


def test_kv_channels_defaults_to_head_width() -> None:
    cfg = tiny_config()
    assert cfg.kv_channels == HEAD_DIM == cfg.head_dim
    with pytest.raises(ValueError):
        tiny_config(ffn_hidden_size=191)


# --------------------------------------------------------------------------- tokenizer


def fake_tiktoken(path: Path) -> Path:
    import base64

    lines = [f"{base64.b64encode(bytes([i])).decode()} {i}" for i in range(256)]
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
    return path


def test_tokenizer_specials_follow_ranks_and_roundtrip(tmp_path: Path) -> None:
    pytest.importorskip("tiktoken")
    from parity.models.qwen.tokenizer import QWenTokenizer

    tok = QWenTokenizer.from_file(fake_tiktoken(tmp_path / "qwen.tiktoken"))
    sp = tok.special_tokens
    assert (sp["<|endoftext|>"], sp["<|im_start|>"], sp["<|im_end|>"]) == (256, 257, 258)
    assert sp["<|extra_0|>"] == 259 and sp["<|extra_204|>"] == 256 + 3 + 204 and len(sp) == 208
    assert tok.eos_token_id == 256
    text = "<|im_start|>user\nhéllo wörld 123<|im_end|>"
    encoded = tok.encode(text)
    assert encoded[0] == 257 and encoded[-1] == 258
    assert encoded[1:-1] == list("user\nhéllo wörld 123".encode())
    assert tok.decode(encoded) == text
    assert tok.decode(encoded, skip_special=True) == "user\nhéllo wörld 123"
    assert tok.encode("<|im_end|>", allowed_special=set()) == list(b"<|im_end|>")


def test_tokenizer_rejects_bad_file(tmp_path: Path) -> None:
    pytest.importorskip("tiktoken")
    from parity.models.qwen.tokenizer import QWenTokenizer

    bad = tmp_path / "bad.tiktoken"
    bad.write_text("QQ== 0\nQg== 5\n", encoding="ascii")
    with pytest.raises(InputError):
        QWenTokenizer.from_file(bad)
    bad.write_text("not-a-line\n", encoding="ascii")
    with pytest.raises(InputError):
        QWenTokenizer.from_file(bad)

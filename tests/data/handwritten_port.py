"""An independently written port (plain torch, no parity.models code) of LLaMA, Qwen2 and
Qwen v1, with one knob per porting bug users make. Each ``build_<bug>`` factory is a
``--port`` factory: ``factory(config, state_dict) -> nn.Module`` with parity.probe calls.

Written for tests/test_hypotheses_ports.py: the bugs here are not the built-in faults, and
the code shares nothing with parity's engine ports, so diagnosing them tests the hypotheses,
not parity's knowledge of its own faults."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from parity import probe

CLEAN: dict[str, Any] = {"softmax_scale": None, "drop_bias": None, "pos_offset": 0, "logn": True, "down_scale": 1.0,
                         "eps_outside": False, "act": "silu", "transpose_q": False, "swap_heads": False,
                         "mask_shift": 0, "interleaved_rope": False, "q_noise": 0.0, "qk_pairs": False}


def _get(cfg: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        v = getattr(cfg, n, None)
        if v is not None:
            return v
    return default


class Port(nn.Module):
    def __init__(self, cfg: Any, sd: dict[str, torch.Tensor], bugs: dict[str, Any]) -> None:
        super().__init__()
        self.bugs = {**CLEAN, **bugs}
        self.qwen1 = "transformer.wte.weight" in sd
        self.hidden = _get(cfg, "hidden_size", "n_embd")
        self.heads = _get(cfg, "num_attention_heads", "n_head")
        self.kv = _get(cfg, "num_key_value_heads", default=self.heads)
        self.d = self.hidden // self.heads
        self.eps = _get(cfg, "rms_norm_eps", "layer_norm_epsilon")
        rope = _get(cfg, "rope_parameters", default={}) or {}
        self.base = float(rope.get("rope_theta") or _get(cfg, "rope_theta", "rotary_emb_base", default=10000.0))
        self.seq_length = _get(cfg, "seq_length") if self.qwen1 else None
        self.ntk = bool(_get(cfg, "use_dynamic_ntk", default=False)) and self.qwen1
        self.use_logn = bool(_get(cfg, "use_logn_attn", default=False)) and self.qwen1
        self.n = _get(cfg, "num_hidden_layers", "n_layer")
        self.p = nn.ParameterDict()
        self._load(sd)

    def _put(self, name: str, t: torch.Tensor | None) -> None:
        if t is not None:
            self.p[name.replace(".", "_")] = nn.Parameter(t.detach().clone(), requires_grad=False)

    def w(self, name: str) -> torch.Tensor | None:
        key = name.replace(".", "_")
        return self.p[key] if key in self.p else None

    def _load(self, sd: dict[str, torch.Tensor]) -> None:
        if self.qwen1:
            self._put("embed", sd["transformer.wte.weight"])
            self._put("norm", sd["transformer.ln_f.weight"])
            for i in range(self.n):
                h = f"transformer.h.{i}."
                wq, wk, wv = sd[h + "attn.c_attn.weight"].chunk(3, dim=0)
                bq, bk, bv = sd[h + "attn.c_attn.bias"].chunk(3, dim=0)
                for k, v in dict(ln1=sd[h + "ln_1.weight"], wq=wq, wk=wk, wv=wv, bq=bq, bk=bk, bv=bv,
                                 wo=sd[h + "attn.c_proj.weight"], ln2=sd[h + "ln_2.weight"], gate=sd[h + "mlp.w2.weight"],
                                 up=sd[h + "mlp.w1.weight"], down=sd[h + "mlp.c_proj.weight"]).items():
                    self._put(f"{i}.{k}", v)
        else:
            self._put("embed", sd["model.embed_tokens.weight"])
            self._put("norm", sd["model.norm.weight"])
            for i in range(self.n):
                h = f"model.layers.{i}."
                a = h + "self_attn."
                for k, v in dict(ln1=sd[h + "input_layernorm.weight"], wq=sd[a + "q_proj.weight"], wk=sd[a + "k_proj.weight"],
                                 wv=sd[a + "v_proj.weight"], bq=sd.get(a + "q_proj.bias"), bk=sd.get(a + "k_proj.bias"),
                                 bv=sd.get(a + "v_proj.bias"), wo=sd[a + "o_proj.weight"], ln2=sd[h + "post_attention_layernorm.weight"],
                                 gate=sd[h + "mlp.gate_proj.weight"], up=sd[h + "mlp.up_proj.weight"],
                                 down=sd[h + "mlp.down_proj.weight"]).items():
                    self._put(f"{i}.{k}", v)
        self._put("head", sd.get("lm_head.weight", self.w("embed")))

    def norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        ms = xf.pow(2).mean(-1, keepdim=True)
        y = xf / (ms.sqrt() + self.eps) if self.bugs["eps_outside"] else xf * torch.rsqrt(ms + self.eps)
        return y.to(x.dtype) * w

    def rope(self, t: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
        base = self.base
        if self.ntk and t > self.seq_length:
            alpha = max(2 ** math.ceil(math.log2(t / self.seq_length) + 1) - 1, 1)
            base = base * alpha ** (self.d / (self.d - 2))
        inv = 1.0 / (base ** (torch.arange(0, self.d, 2, device=device).float() / self.d))
        pos = torch.arange(t, device=device).float() + self.bugs["pos_offset"]
        ang = torch.outer(pos, inv)
        emb = ang.repeat_interleave(2, dim=-1) if self.bugs["interleaved_rope"] else torch.cat((ang, ang), -1)
        return emb.cos(), emb.sin()

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        if self.bugs["interleaved_rope"]:
            a, b = xf[..., 0::2], xf[..., 1::2]
            turned = torch.stack((-b, a), dim=-1).flatten(-2)
        else:
            a, b = xf.chunk(2, dim=-1)
            turned = torch.cat((-b, a), dim=-1)
        return (xf * cos[:, None] + turned * sin[:, None]).to(x.dtype)

    def proj(self, x: torch.Tensor, i: int, kind: str) -> torch.Tensor:
        w, b = self.w(f"{i}.w{kind}"), self.w(f"{i}.b{kind}")
        if kind == "q" and self.bugs["transpose_q"]:
            w = w.T
        out = x @ w.T
        if b is not None and self.bugs["drop_bias"] != kind:
            out = out + b
        return out

    def attention(self, x: torch.Tensor, i: int, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        t = x.shape[0]
        q = self.proj(x, i, "q").view(t, self.heads, self.d)
        k = self.proj(x, i, "k").view(t, self.kv, self.d)
        v = self.proj(x, i, "v").view(t, self.kv, self.d)
        if self.bugs["swap_heads"]:
            q = q.flip(1)
        if self.bugs["qk_pairs"]:  # rows converted for a pair-rotating rope (GGUF), rotated as halves here
            q, k = (torch.stack(x.chunk(2, dim=-1), dim=-1).flatten(-2) for x in (q, k))
        if self.bugs["q_noise"]:  # a bug no hypothesis covers: q perturbed element by element
            g = torch.Generator(device="cpu").manual_seed(1)
            q = q + self.bugs["q_noise"] * torch.randn(q.shape, generator=g).to(q)
        for name, val in (("q", q), ("k", k), ("v", v)):
            probe(f"blocks.{i}.attn.{name}", val)
        q, k = self.rotate(q, cos, sin), self.rotate(k, cos, sin)
        if self.use_logn and self.bugs["logn"] and t > self.seq_length:
            p = torch.arange(t, device=x.device, dtype=torch.float32)
            f = torch.where(p >= self.seq_length, torch.log(p + 1) / math.log(self.seq_length), torch.ones_like(p))
            q = q * f[:, None, None].to(q.dtype)
        probe(f"blocks.{i}.attn.q_rot", q)
        probe(f"blocks.{i}.attn.k_rot", k)
        rep = self.heads // self.kv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scale = self.bugs["softmax_scale"](self.d) if self.bugs["softmax_scale"] else 1 / math.sqrt(self.d)
        s = torch.einsum("thd,shd->hts", q.float(), k.float()) * scale
        allowed = torch.ones(t, t, dtype=torch.bool, device=x.device).tril(self.bugs["mask_shift"])
        p = torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1).to(v.dtype)
        ctx = torch.einsum("hts,shd->thd", p, v).reshape(t, -1)
        return ctx @ self.w(f"{i}.wo").T

    def mlp(self, x: torch.Tensor, i: int) -> torch.Tensor:
        act = {"silu": F.silu, "gelu": F.gelu}[self.bugs["act"]]
        h = act(x @ self.w(f"{i}.gate").T) * (x @ self.w(f"{i}.up").T)
        return (h @ self.w(f"{i}.down").T) * self.bugs["down_scale"]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = input_ids.reshape(-1)
        x = self.w("embed")[ids]
        probe("embed", x[None])
        cos, sin = self.rope(ids.shape[0], ids.device)
        probe("rope.cos", cos)
        probe("rope.sin", sin)
        for i in range(self.n):
            h = self.norm(x, self.w(f"{i}.ln1"))
            probe(f"blocks.{i}.attn_in", h[None])
            a = self.attention(h, i, cos, sin)
            probe(f"blocks.{i}.attn_out", a[None])
            x = x + a
            probe(f"blocks.{i}.resid_mid", x[None])
            h = self.norm(x, self.w(f"{i}.ln2"))
            probe(f"blocks.{i}.mlp_in", h[None])
            m = self.mlp(h, i)
            probe(f"blocks.{i}.mlp_out", m[None])
            x = x + m
            probe(f"blocks.{i}.resid_post", x[None])
        x = self.norm(x, self.w("norm"))
        probe("final_norm", x[None])
        return (x @ self.w("head").T)[None]


def _factory(**bugs: Any) -> Any:
    def build(config: Any, state_dict: dict[str, torch.Tensor]) -> Port:
        return Port(config, state_dict, bugs)
    return build


build_clean = _factory()
build_scale_1_over_d = _factory(softmax_scale=lambda d: 1.0 / d)
build_drop_q_bias = _factory(drop_bias="q")
build_positions_plus_1 = _factory(pos_offset=1)
build_no_logn = _factory(logn=False)
build_down_x1_5 = _factory(down_scale=1.5)
build_eps_outside_sqrt = _factory(eps_outside=True)
build_gelu = _factory(act="gelu")
build_transposed_q = _factory(transpose_q=True)
build_q_heads_reversed = _factory(swap_heads=True)
build_mask_shift = _factory(mask_shift=1)
build_interleaved_rope = _factory(interleaved_rope=True)
build_qk_pair_rows = _factory(qk_pairs=True)
build_q_noise = _factory(q_noise=0.05)

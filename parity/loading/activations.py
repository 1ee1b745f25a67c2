"""Trained-model activations in seeded weights (``--activations trained``).

Seeded Gaussian weights give activations with no outliers; trained LLMs have three kinds of
structure that decide where low-precision engines break, planted here through the weights
(never by editing tensors at run time), with the magnitudes of the preset's
``[activations.trained]`` table (which cites its sources):

* **massive activations** (Sun et al. 2024, "Massive Activations in Large Language Models"):
  a few fixed hidden channels of the residual stream hold values in the thousands at the start
  token and at delimiter tokens, from an early block on, nearly constant afterwards. Planted:
  the trigger tokens' embeddings carry a component along a direction ``g``; one MLP neuron of
  ``massive_block`` reads ``g`` and its down-projection column writes ``massive_values`` into
  ``massive_channels``.
* **attention sink** (Xiao et al. 2023, StreamingLLM): queries of later blocks attend to the
  massive tokens whatever their content. Planted: every token carries a shared ("DC")
  component ``u`` in its embedding; in each later block one rotary pair of the slowest
  frequency of every head reads ``u`` in the query and the massive channels in the key, scaled
  so that the massive tokens' logits rise by ``sink_logit``; the value projection ignores the
  massive channels (the sink's value is small).
* **outlier features** (Dettmers et al. 2022, LLM.int8(), section 4): a handful of fixed
  feature dimensions of the attention and MLP inputs are systematically large for every token.
  Planted: those channels of the blocks' norm weights are multiplied by ``outlier_scale``.

The scales are calibrated with one float32 forward over a short seeded sequence, each block's
weights set from its own (already planted) inputs, so the planted magnitudes hold whatever the
model's width.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from parity.errors import ModelError

#: module names per layout: (embedding, blocks, ln1, ln2, attention, mlp, gate, up, down)
HF = {"embed": "model.embed_tokens", "blocks": "model.layers", "ln1": "input_layernorm",
      "ln2": "post_attention_layernorm", "q": "self_attn.q_proj", "k": "self_attn.k_proj",
      "v": "self_attn.v_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
QWEN = {"embed": "transformer.wte", "blocks": "transformer.h", "ln1": "ln_1", "ln2": "ln_2",
        "qkv": "attn.c_attn", "gate": "mlp.w2", "up": "mlp.w1", "down": "mlp.c_proj"}
LAYOUTS = {"qwen": QWEN, "llama": HF, "qwen2": HF}


@dataclass
class TrainedSpec:
    """The preset's ``[activations.trained]`` table."""

    start_tokens: list[int]
    delimiter_tokens: list[int]
    massive_block: int = 1
    massive_channels: list[int] = field(default_factory=lambda: [1415, 2533])
    massive_values: list[float] = field(default_factory=lambda: [2500.0, -1500.0])
    outlier_channels: int = 6
    outlier_scale: float = 20.0
    sink_logit: float = 8.0
    delimiter_every: int = 20  # seeded inputs: one delimiter per this many tokens on average

    @classmethod
    def from_preset(cls, raw: dict[str, Any] | None, family: str) -> TrainedSpec:
        if not raw:
            raise ModelError(f"model '{family}' has no [activations.trained] table in its preset.",
                             note="--activations trained plants trained-model structure into seeded weights; "
                                  "the qwen, llama and qwen2 presets define it")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ModelError(f"preset '{family}': unknown key '{unknown[0]}' in [activations.trained].",
                             note="keys: " + ", ".join(sorted(known)))
        try:
            spec = cls(**raw)
        except TypeError as exc:
            raise ModelError(f"preset '{family}' [activations.trained]: {exc}") from None
        if len(spec.massive_channels) != len(spec.massive_values) or not spec.start_tokens:
            raise ModelError(f"preset '{family}' [activations.trained]: one value per massive channel and at "
                             "least one start token are needed.")
        return spec

    @property
    def triggers(self) -> list[int]:
        return list(dict.fromkeys(self.start_tokens + self.delimiter_tokens))


def trained_ids(ids: list[int], spec: TrainedSpec, vocab: int, seed: int) -> list[int]:
    """Seeded token ids shaped like text for trained activations: the start token first and a
    delimiter about every ``delimiter_every`` tokens (where trained models show massive activations)."""
    out = list(ids)
    out[0] = spec.start_tokens[0] % vocab
    delims = [t % vocab for t in spec.delimiter_tokens]
    if delims and len(out) > 2:
        gen = torch.Generator().manual_seed(seed + 1)
        hits = torch.rand(len(out) - 1, generator=gen) < 1.0 / max(spec.delimiter_every, 2)
        picks = torch.randint(0, len(delims), (len(out) - 1,), generator=gen)
        for i in torch.nonzero(hits).flatten().tolist():
            out[i + 1] = delims[int(picks[i])]
    return out


def _unit(n: int, gen: torch.Generator, device: torch.device, avoid: list[int]) -> torch.Tensor:
    v = torch.randn(n, generator=gen, device=device, dtype=torch.float32)
    v[avoid] = 0.0
    return v / v.norm()


def _mod(model: nn.Module, path: str) -> Any:
    return model.get_submodule(path)


class _Planter:
    """Sets each block's planted weights from its own inputs during one calibration forward."""

    def __init__(self, model: nn.Module, family: str, cfg: Any, spec: TrainedSpec, seed: int) -> None:
        self.model, self.spec, self.lay = model, spec, LAYOUTS[family]
        self.blocks = list(_mod(model, self.lay["blocks"]))
        emb = _mod(model, self.lay["embed"]).weight
        self.device, self.h = emb.device, emb.shape[1]
        self.nh = int(getattr(cfg, "num_attention_heads", None) or cfg.n_head)
        self.nkv = int(getattr(cfg, "num_key_value_heads", None) or self.nh)
        self.d = int(getattr(cfg, "head_dim", None) or self.h // self.nh)
        if getattr(cfg, "rotary_pct", 1.0) != 1.0:
            raise ModelError("--activations trained needs rotary over the whole head (rotary_pct 1).")
        gen = torch.Generator(device=self.device).manual_seed(seed + 7919)
        self.massive = [c % self.h for c in spec.massive_channels]
        sign = torch.tensor([math.copysign(1.0, v) for v in spec.massive_values], device=self.device)
        self.r = torch.zeros(self.h, device=self.device)
        self.r[self.massive] = sign / math.sqrt(len(self.massive))  # the key's reading of the massive channels
        taken = set(self.massive)
        perm = torch.randperm(self.h, generator=gen, device=self.device).tolist()
        self.outliers = [c for c in perm if c not in taken][:spec.outlier_channels]
        # the trigger and shared directions avoid the special channels (their noise would swamp them)
        self.g, self.u = _unit(self.h, gen, self.device, self.massive + self.outliers), \
            _unit(self.h, gen, self.device, self.massive + self.outliers)
        self.trig: torch.Tensor | None = None  # [T] bool: which calibration tokens are triggers

    # ---------------------------------------------------------------- embedding and norms
    def plant_static(self) -> None:
        emb = _mod(self.model, self.lay["embed"]).weight
        scale = emb[:1024].norm(dim=1).mean()  # a token's embedding norm
        emb.add_(0.5 * scale * self.u)  # the shared component every token carries (queries of the sink)
        trig = torch.tensor([t % emb.shape[0] for t in self.spec.triggers], device=self.device)
        emb[trig] += 2.0 * scale * self.g
        k = self.spec.outlier_scale
        for blk in self.blocks:  # the channels are large in the inputs; what the projections read stays O(1)
            for ln in ("ln1", "ln2"):
                _mod(blk, self.lay[ln]).weight[self.outliers] *= k
            for w in self._readers(blk):
                w[:, self.outliers] /= k

    def _readers(self, blk: nn.Module) -> list[torch.Tensor]:
        """The weights that read the attention and MLP inputs."""
        names = ["qkv"] if "qkv" in self.lay else ["q", "k", "v"]
        return [_mod(blk, self.lay[n]).weight for n in names + ["gate", "up"]]

    # ---------------------------------------------------------------- massive activations
    def plant_massive(self, x: torch.Tensor, blk: nn.Module) -> None:
        """Neuron 0 of this block's MLP: its activated branch reads ``g`` minus an offset on the
        shared component ``u`` (+12 at the start token, about -6 elsewhere: off), its linear
        branch reads ``u`` (about 1 at every token), and its down-projection column writes the
        massive values; calibrated on the start token."""
        assert self.trig is not None
        xf = x[0].float()
        p, dc = xf @ self.g, xf @ self.u  # [T]
        dcm = float(dc[~self.trig].mean())
        s = 18.0 / float(p[0])
        gate, up, down = (_mod(blk, self.lay[k]).weight for k in ("gate", "up", "down"))
        gate[0] = s * self.g - (6.0 / dcm) * self.u
        up[0] = self.u / dcm
        n0 = F.silu(s * p[0] - 6.0 * dc[0] / dcm) * (dc[0] / dcm)
        col = torch.zeros(self.h, device=self.device)
        col[self.massive] = torch.tensor(self.spec.massive_values, device=self.device)
        down[:, 0] = col / n0

    # ---------------------------------------------------------------- attention sink
    def plant_sink(self, x: torch.Tensor, blk: nn.Module) -> None:
        """One slow rotary pair per head: query reads ``u``, key reads the massive channels."""
        assert self.trig is not None
        xf = x[0].float()
        q_dc = (xf[~self.trig] @ self.u).mean()
        k_m = (xf[self.trig] @ self.r).mean()
        amp = math.sqrt(self.spec.sink_logit * math.sqrt(self.d))  # q_a * k_a / sqrt(d) = sink_logit
        wq, bq, wk, bk, wv = self._qkv(blk)
        half = self.d // 2
        for h in range(self.nh):
            rows = (h * self.d + half - 1, h * self.d + self.d - 1)  # the slowest pair (rotate-half)
            wq[rows[0]], wq[rows[1]] = (amp / float(q_dc)) * self.u, 0.0
            if bq is not None:
                bq[list(rows)] = 0.0
        for h in range(self.nkv):
            rows = (h * self.d + half - 1, h * self.d + self.d - 1)
            wk[rows[0]], wk[rows[1]] = (amp / float(k_m)) * self.r, 0.0
            if bk is not None:
                bk[list(rows)] = 0.0
        wv[:, self.massive] = 0.0

    def _qkv(self, blk: nn.Module) -> tuple[Any, Any, Any, Any, Any]:
        if "qkv" in self.lay:
            lin = _mod(blk, self.lay["qkv"])
            w, b = lin.weight, lin.bias
            qs, ks = self.nh * self.d, self.nkv * self.d
            wq, wk, wv = w[:qs], w[qs:qs + ks], w[qs + ks:]
            bq, bk = (None, None) if b is None else (b[:qs], b[qs:qs + ks])
            return wq, bq, wk, bk, wv
        q, k, v = (_mod(blk, self.lay[n]) for n in ("q", "k", "v"))
        return q.weight, q.bias, k.weight, k.bias, v.weight

    # ---------------------------------------------------------------- calibration forward
    def calibrate(self, ids: list[int]) -> None:
        vocab = _mod(self.model, self.lay["embed"]).weight.shape[0]
        trig_ids = {t % vocab for t in self.spec.triggers}
        self.trig = torch.tensor([t in trig_ids for t in ids], device=self.device)
        handles = []
        for i, blk in enumerate(self.blocks):
            if i == self.spec.massive_block:
                handles.append(_mod(blk, self.lay["ln2"]).register_forward_hook(
                    lambda m, a, out, blk=blk: self.plant_massive(_first(out), blk)))
            if i > self.spec.massive_block:
                handles.append(_mod(blk, self.lay["ln1"]).register_forward_hook(
                    lambda m, a, out, blk=blk: self.plant_sink(_first(out), blk)))
        try:
            self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=False)
        finally:
            for hd in handles:
                hd.remove()


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def plant(model: nn.Module, family: str, config: Any, spec: TrainedSpec, seed: int) -> None:
    """Plant massive activations, the attention sink and outlier features into ``model``'s
    seeded float32 weights (in place)."""
    if family not in LAYOUTS:
        raise ModelError(f"--activations trained does not know the weight layout of '{family}'.",
                         note="families: " + ", ".join(LAYOUTS))
    planter = _Planter(model, family, config, spec, seed)
    if not 0 <= spec.massive_block < len(planter.blocks) - 1:
        raise ModelError(f"[activations.trained] massive_block {spec.massive_block} is not a block before the last.")
    planter.plant_static()
    vocab = _mod(model, LAYOUTS[family]["embed"]).weight.shape[0]
    gen = torch.Generator().manual_seed(seed + 104729)
    base = torch.randint(0, min(vocab, 32000), (64,), generator=gen).tolist()
    ids = trained_ids(base, TrainedSpec(**{**spec.__dict__, "delimiter_every": 6}), vocab, seed)
    planter.calibrate(ids)

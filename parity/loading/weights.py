"""Seeded weights for presets: deterministic, scaled so activations stay O(1).

Linear weights ~ N(0, 1/fan_in), embeddings ~ N(0, 1), norm weights ~ 1 + N(0, 0.05^2),
biases ~ N(0, 0.1^2). Parameters are filled in state-dict order from one generator, on
the device the model lives on (so a 7B-shaped model is built on the GPU directly).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def _is_norm(name: str) -> bool:
    leaf = name.rsplit(".", 2)
    return any(k in name for k in ("norm", "ln_")) or (len(leaf) > 1 and leaf[-2].startswith("ln"))


@torch.no_grad()
def seeded_init(model: nn.Module, seed: int) -> None:
    seen: set[int] = set()
    gens: dict[torch.device, torch.Generator] = {}
    for name, p in model.named_parameters():
        if id(p) in seen:  # tied weights
            continue
        seen.add(id(p))
        gen = gens.get(p.device)
        if gen is None:
            gen = gens[p.device] = torch.Generator(device=p.device).manual_seed(seed)
        noise = torch.randn(p.shape, generator=gen, device=p.device, dtype=torch.float32)
        if p.dim() == 1:
            value = 1.0 + 0.05 * noise if _is_norm(name) else 0.1 * noise
        elif "embed" in name or "wte" in name:
            value = noise
        else:
            value = noise / math.sqrt(p.shape[-1])
        p.copy_(value.to(p.dtype))

"""Seeded weights for presets: deterministic, scaled so activations stay O(1).

Linear weights ~ N(0, 1/fan_in), embeddings ~ N(0, 1), norm weights ~ 1 + N(0, 0.05^2),
biases ~ N(0, 0.1^2). Parameters are filled in state-dict order from one generator, on
the device the model lives on (so a 7B-shaped model is built on the GPU directly).
:func:`seeded_value` makes one parameter's value; a streamed reference
(parity.loading.streamed) draws the same values one block at a time.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def _is_norm(name: str) -> bool:
    leaf = name.rsplit(".", 2)
    return any(k in name for k in ("norm", "ln_")) or (len(leaf) > 1 and leaf[-2].startswith("ln"))


def seeded_value(name: str, shape: tuple[int, ...], gen: torch.Generator, device: torch.device | str) -> torch.Tensor:
    """The float32 value of parameter ``name``, drawn from ``gen`` (advanced by one draw).
    Scaled in place: one tensor of the parameter's size, never two (an LM head of a 150k
    vocabulary is 3 GiB in float32)."""
    noise = torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
    if len(shape) == 1:
        return noise.mul_(0.05).add_(1.0) if _is_norm(name) else noise.mul_(0.1)
    if "embed" in name or "wte" in name:
        return noise
    return noise.div_(math.sqrt(shape[-1]))


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
        p.copy_(seeded_value(name, tuple(p.shape), gen, p.device).to(p.dtype))

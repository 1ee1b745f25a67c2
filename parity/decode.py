"""Greedy decoding of one torch causal LM with its KV cache, and generation-side faults.

:class:`Stepper` runs the prefill (all prompt tokens, one forward, a fresh cache) and then
one token per step, passing the cache back. It hides the two cache conventions parity
meets: transformers models (``DynamicCache``, explicit ``position_ids``) and the clean-room
Qwen v1 (``QWenCache``; positions always follow the cache length, ``position_ids`` ignored).

``position_offset`` shifts the positions used at decode steps (never at prefill): the
``kv-position`` fault, an engine that numbers the cached step's token wrongly. For Qwen v1,
whose forward ignores ``position_ids``, the shift is applied to the rotary tables' positions
through a forward pre-hook on ``transformer.rotary_emb``, removed when the stepper closes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from parity.errors import UsageError
from parity.faults import fault as _fault
from parity.faults import parse as parse_faults


class Stepper:
    def __init__(self, model: Any, position_offset: int = 0) -> None:
        self.model = model
        self.position_offset = position_offset
        self.cache: Any = None
        self.length = 0  # tokens in the cache
        self._decoding = False
        self._hook: Any = None
        self._is_qwen_v1 = hasattr(model, "transformer") and hasattr(model.transformer, "rotary_emb")
        if position_offset and self._is_qwen_v1:
            self._hook = model.transformer.rotary_emb.register_forward_pre_hook(self._shift, with_kwargs=True)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _shift(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]] | None:
        if not self._decoding:
            return None
        return (args[0] + self.position_offset, *args[1:]), kwargs

    def close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def __enter__(self) -> Stepper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def prefill(self, ids: list[int]) -> torch.Tensor:
        """Logits [V] (float32, on CPU) of the last prompt position, from a fresh cache."""
        self.cache, self.length, self._decoding = self._new_cache(), 0, False
        return self._forward(ids)

    def step(self, token: int) -> torch.Tensor:
        """Feed one token through the cache; logits [V] of that position."""
        if self.length == 0:
            raise RuntimeError("step() before prefill()")
        self._decoding = True
        return self._forward([token])

    def _new_cache(self) -> Any:
        """A DynamicCache for transformers models; None for models that make their own
        cache on the prefill (the clean-room Qwen v1, the engine-style ports)."""
        if self._is_qwen_v1 or not hasattr(self.model, "generation_config"):
            return None
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def _forward(self, ids: list[int]) -> torch.Tensor:
        x = torch.as_tensor(ids, dtype=torch.long, device=self.device).reshape(1, -1)
        offset = self.position_offset if self._decoding else 0
        pos = torch.arange(self.length, self.length + len(ids), device=self.device).reshape(1, -1) + offset
        kwargs: dict[str, Any] = {"input_ids": x, "past_key_values": self.cache, "use_cache": True}
        if not self._is_qwen_v1:
            kwargs["position_ids"] = pos
        with torch.inference_mode():
            out = self.model(**kwargs)
        self.cache = out.past_key_values
        self.length += len(ids)
        return out.logits[0, -1].detach().to("cpu", torch.float32)


def full_forward_last(model: Any, ids: list[int]) -> torch.Tensor:
    """Last-position logits of one cache-free forward over ``ids`` (the cache's ground truth)."""
    x = torch.as_tensor(ids, dtype=torch.long, device=next(model.parameters()).device).reshape(1, -1)
    with torch.inference_mode():
        out = model(input_ids=x, use_cache=False)
    return out.logits[0, -1].detach().to("cpu", torch.float32)


# --------------------------------------------------------------------------- faults


@dataclass
class CandidateGeneration:
    """What a generation-side fault may change on the candidate: its stop set, its
    generation config, the decode-step position offset. ``notes`` say what was done."""

    stop_ids: list[int]
    config: dict[str, Any]
    specials: dict[str, int]
    model_eos: list[int]
    position_offset: int = 0
    notes: list[str] = field(default_factory=list)


def fault_eos_token(gen: CandidateGeneration) -> None:
    """The engine's single end token is ``<|endoftext|>`` (or, for a family without it, the
    model config's ``eos_token_id``), so it no longer stops at ``<|im_end|>`` or the other
    chat stop tokens. The DESIGN.md Qwen porting account, step 4."""
    eos = gen.specials.get("<|endoftext|>")
    new = [eos] if eos is not None else list(gen.model_eos)
    if not new or sorted(new) == sorted(gen.stop_ids):
        raise UsageError("fault 'eos-token' changes nothing for this model: its stop set is already "
                         f"{gen.stop_ids}.", note="use it with a chat model that has several stop tokens (qwen, qwen2)")
    gen.stop_ids = new
    gen.config["eos_token_id"] = new[0] if len(new) == 1 else new
    gen.notes.append(f"eos-token: candidate stops only at {new}")


def fault_kv_position(gen: CandidateGeneration) -> None:
    """Decode steps use position ``past_length + 1`` instead of ``past_length`` (off by one
    for every token fed through the KV cache); the prefill, a single forward pass, is right."""
    gen.position_offset = 1
    gen.notes.append("kv-position: decode-step positions off by +1")


# Registered in the one fault registry (parity.faults) with target "generation": a
# generation fault receives the CandidateGeneration as its "module".
_fault("eos-token", "candidate stops only at <|endoftext|> (the engine's single end token)",
       target="generation", per_block=False)(lambda gen, spec, ctx: fault_eos_token(gen))
_fault("kv-position", "decode steps use position past_length + 1 (KV-cache position bug)",
       target="generation", per_block=False)(lambda gen, spec, ctx: fault_kv_position(gen))


def apply_faults(names: list[str], gen: CandidateGeneration, num_blocks: int) -> None:
    """Apply the generation faults among ``names`` (port/model faults are applied where the
    candidate and reference are built)."""
    for spec in parse_faults(names, num_blocks):
        if spec.fault.target == "generation":
            spec.fault.apply(gen, spec, None)

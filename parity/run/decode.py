"""Greedy decoding of one torch causal LM with its KV cache.

:class:`Stepper` runs the prefill (all prompt tokens, one forward, a fresh cache) and then
one token per step, passing the cache back. It hides the two cache conventions parity
meets: transformers models (``DynamicCache``, explicit ``position_ids``) and the clean-room
Qwen v1 (``QWenCache``; positions always follow the cache length, ``position_ids`` ignored).
The cache goes in under the keyword the model's forward names: ``cache`` for transformers
versions that renamed it (passing ``past_key_values`` there is deprecated, with a
FutureWarning), ``past_key_values`` otherwise (older transformers, Qwen v1, the engine-style
ports); it is read back from the output's ``cache`` or ``past_key_values``, whichever it has.

``position_offset`` shifts the positions used at decode steps (never at prefill): the
``kv-position`` fault (parity.faults.generation), an engine that numbers the cached step's
token wrongly. For Qwen v1,
whose forward ignores ``position_ids``, the shift is applied to the rotary tables' positions
through a forward pre-hook on ``transformer.rotary_emb``, removed when the stepper closes.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch


def cache_keyword(model: Any) -> str:
    """``"cache"`` when ``model``'s forward names a ``cache`` parameter (recent transformers,
    5.17 and 5.24 among them, where ``past_key_values`` is deprecated), else
    ``"past_key_values"``."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError, AttributeError):
        return "past_key_values"
    return "cache" if "cache" in params and "past_key_values" not in params else "past_key_values"


def returned_cache(out: Any) -> Any:
    """The cache an output carries: ``out.cache`` where the output type has that field
    (reading ``past_key_values`` there is deprecated), else ``out.past_key_values``."""
    fields = getattr(type(out), "__dataclass_fields__", None) or {}
    if "cache" in fields or not hasattr(out, "past_key_values"):
        return getattr(out, "cache", None)
    return out.past_key_values


class Stepper:
    def __init__(self, model: Any, position_offset: int = 0) -> None:
        self.model = model
        self.position_offset = position_offset
        self.cache: Any = None
        self.length = 0  # tokens in the cache
        self._decoding = False
        self._hook: Any = None
        self._is_qwen_v1 = hasattr(model, "transformer") and hasattr(model.transformer, "rotary_emb")
        self._cache_kw = cache_keyword(model)
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
        kwargs: dict[str, Any] = {"input_ids": x, self._cache_kw: self.cache, "use_cache": True}
        if not self._is_qwen_v1:
            kwargs["position_ids"] = pos
        with torch.inference_mode():
            out = self.model(**kwargs)
        self.cache = returned_cache(out)
        self.length += len(ids)
        return out.logits[0, -1].detach().to("cpu", torch.float32)


def full_forward_last(model: Any, ids: list[int]) -> torch.Tensor:
    """Last-position logits of one cache-free forward over ``ids`` (the cache's ground truth)."""
    x = torch.as_tensor(ids, dtype=torch.long, device=next(model.parameters()).device).reshape(1, -1)
    with torch.inference_mode():
        out = model(input_ids=x, use_cache=False)
    return out.logits[0, -1].detach().to("cpu", torch.float32)

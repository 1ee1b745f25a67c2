"""A model whose weights live on the device one block at a time.

The module tree is built with every parameter on the ``meta`` device (buffers, such as
rotary tables, are real: computed as the whole model computes them). Each *unit* -- a
block, and every other module that owns parameters (embedding, final norm, LM head) -- gets
a forward pre-hook that loads its parameters to the device (from a lazy weight source,
parity.loading.lazy) and a forward hook that puts the ``meta`` placeholders back. An
ordinary forward pass then runs the model's own code over the whole sequence, block after
block, with one unit's weights (plus activations) on the device: the same kernels on the
same values as the whole model, so the same bits. This is what accelerate's offload hooks
do (``accelerate.hooks.AlignDevicesHook``); parity's own few lines keep the seeded weights
(drawn per parameter) and need no accelerate at run time.

Anything that reads the weights directly (a state dict, a deep copy) sees ``meta`` tensors
and fails loudly; :meth:`Streamed.materialize` makes a whole copy (a candidate that fits),
:meth:`Streamed.derive` another streamed copy in another dtype (the precision twin).
"""
from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from parity.loading.lazy import CheckpointWeights, SeededWeights

_GIB = 1 << 30


@contextlib.contextmanager
def params_on_meta() -> Iterator[None]:
    """Every parameter registered inside is replaced by a ``meta`` tensor of its shape and
    dtype (buffers stay where they are made), as ``accelerate.init_empty_weights`` does."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        p = module._parameters.get(name)
        if p is not None and p.device.type != "meta":
            module._parameters[name] = nn.Parameter(p.detach().to("meta"), requires_grad=False)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def skeleton(source: Any, device: str, attn: str = "eager") -> nn.Module:
    """``source``'s model (parity.loading.source.ModelSource) with parameters on ``meta`` and
    buffers on ``device``, float32, eval mode: what ``ModelSource.build`` makes, minus weights.
    (Initializing a parameter on ``meta`` costs nothing: no init needs skipping.)"""
    with torch.device(device), params_on_meta():
        model = source.family.build(source.config_dict, attn)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    model = model.to(torch.float32).eval()
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()  # the transient allocations of parameters moved to meta
    return model


@dataclass
class _Slot:
    owner: nn.Module
    leaf: str
    source_name: str  # the tensor it loads (a tied alias loads the first name)
    placeholder: nn.Parameter


@dataclass
class _Unit:
    path: str
    slots: list[_Slot] = field(default_factory=list)
    depth: int = 0
    nbytes: int = 0


def units_of(model: nn.Module, block_pattern: str) -> list[_Unit]:
    """The units of ``model``: every module matching ``block_pattern`` ("model.layers.{i}"),
    and every other module owning parameters directly, in module order."""
    regex = re.compile("^" + re.escape(block_pattern).replace(r"\{i\}", r"\d+") + "$")
    first: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        first.setdefault(id(p), name)
    units: list[_Unit] = []
    inside: list[str] = []
    for path, module in model.named_modules(remove_duplicate=False):
        if any(path.startswith(b + ".") for b in inside):
            continue
        block = bool(regex.match(path))
        own = list(module.named_parameters(recurse=block, remove_duplicate=False))
        if not own:
            continue
        if block:
            inside.append(path)
        unit = _Unit(path)
        for name, p in own:
            sub, _, leaf = name.rpartition(".")
            owner = module.get_submodule(sub) if sub else module
            unit.slots.append(_Slot(owner, leaf, first[id(p)], p))
            unit.nbytes += p.numel() * 4
        units.append(unit)
    return units


class Streamed:
    """The streaming state of one skeleton: its units, hooks and weight source."""

    def __init__(self, model: nn.Module, weights: Any, device: str, dtype: torch.dtype, block_pattern: str,
                 rebuild: Callable[[], nn.Module]) -> None:
        self.model, self.weights, self.dtype = model, weights, dtype
        self.device = torch.device(device)
        self.block_pattern = block_pattern
        self.rebuild = rebuild
        self.units = units_of(model, block_pattern)
        self.loads = 0
        self._handles = []
        for u in self.units:
            m = model.get_submodule(u.path)
            self._handles.append(m.register_forward_pre_hook(self._loader(u)))
            self._handles.append(m.register_forward_hook(self._releaser(u)))
        model.parity_stream = self  # the mark parity.engines.pytorch reads (device, dtype, derive)

    # -- hooks ------------------------------------------------------------------------
    def _loader(self, unit: _Unit) -> Callable[..., None]:
        def hook(_m: nn.Module, _args: Any) -> None:
            unit.depth += 1
            if unit.depth == 1:
                self.load(unit)

        return hook

    def _releaser(self, unit: _Unit) -> Callable[..., None]:
        def hook(_m: nn.Module, _args: Any, _out: Any) -> None:
            unit.depth -= 1
            if unit.depth == 0:
                self.release(unit)

        return hook

    @torch.no_grad()
    def load(self, unit: _Unit) -> None:
        cache: dict[str, nn.Parameter] = {}
        for s in unit.slots:
            p = cache.get(s.source_name)
            if p is None:
                value = self.weights.get(s.source_name).to(device=self.device, dtype=self.dtype)
                p = cache[s.source_name] = nn.Parameter(value, requires_grad=False)
            s.owner._parameters[s.leaf] = p
        self.loads += 1

    def release(self, unit: _Unit) -> None:
        for s in unit.slots:
            s.owner._parameters[s.leaf] = s.placeholder

    @contextlib.contextmanager
    def holding(self, module_path: str) -> Iterator[None]:
        """The units holding ``module_path`` (the module itself or one around it) loaded for
        the duration of the block (the targeted pass reads a block's weights)."""
        units = [u for u in self.units if module_path == u.path or module_path.startswith(u.path + ".")
                 or u.path.startswith(module_path + ".")]
        for u in units:
            u.depth += 1
            if u.depth == 1:
                self.load(u)
        try:
            yield
        finally:
            for u in units:
                u.depth -= 1
                if u.depth == 0:
                    self.release(u)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # -- what a run needs -------------------------------------------------------------
    @property
    def largest_unit_bytes(self) -> int:
        return max((u.nbytes for u in self.units), default=0) * self.dtype.itemsize // 4

    def describe(self) -> dict[str, Any]:
        return {"units": len(self.units), "weights": self.weights.label,
                "largest_unit_gib": round(self.largest_unit_bytes / _GIB, 3), "dtype": str(self.dtype).removeprefix("torch.")}

    def derive(self, dtype: torch.dtype, device: str | None = None) -> nn.Module:
        """Another streamed model of the same weights, loaded in ``dtype`` on ``device`` (the
        precision twin). Its buffers are computed where this model's were, then moved, as a
        copy of a whole model would have them."""
        model = self.rebuild()
        target = torch.device(device) if device is not None else self.device
        for m in model.modules():
            for k, b in m._buffers.items():
                if b is not None and b.device != target:
                    m._buffers[k] = b.to(target)
        Streamed(model, self.weights, str(target), dtype, self.block_pattern, self.rebuild)
        return model

    @torch.no_grad()
    def materialize(self, dtype: torch.dtype, device: str) -> nn.Module:
        """A whole model of these weights in ``dtype`` on ``device``, one parameter cast at a
        time (no float32 copy of the model ever exists)."""
        model = self.rebuild()
        made: dict[str, nn.Parameter] = {}
        for u in units_of(model, self.block_pattern):
            for s in u.slots:
                p = made.get(s.source_name)
                if p is None:
                    value = self.weights.get(s.source_name).to(device=device, dtype=dtype)
                    p = made[s.source_name] = nn.Parameter(value, requires_grad=False)
                s.owner._parameters[s.leaf] = p
        return model.to(device)


def weight_source(source: Any, model: nn.Module, device: str) -> SeededWeights | CheckpointWeights:
    """The lazy weights of ``source``: the checkpoint's files, else its seeded values."""
    if source.checkpoint is not None:
        weights = CheckpointWeights(source.checkpoint)
        first: dict[int, str] = {}
        aliases: dict[str, str] = {}
        expected: dict[str, tuple[int, ...]] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            if id(p) in first:
                aliases[name] = first[id(p)]
            else:
                first[id(p)] = name
                expected[name] = tuple(p.shape)
        for name, b in model.named_buffers():
            if name in weights.shapes:
                expected[name] = tuple(b.shape)
        weights.check(expected, aliases)
        return weights
    order = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    return SeededWeights(order, source.seed, device)


def streamed_model(source: Any, device: str, block_pattern: str, dtype: torch.dtype = torch.float32,
                   attn: str = "eager") -> nn.Module:
    """``source``'s model streamed block by block on ``device`` (see the module's docstring)."""
    def rebuild() -> nn.Module:
        return skeleton(source, device, attn)

    model = rebuild()
    Streamed(model, weight_source(source, model, device), device, dtype, block_pattern, rebuild)
    return model


def stream_of(model: Any) -> Streamed | None:
    """The streaming state of ``model``, or None for an ordinary model."""
    s = getattr(model, "parity_stream", None)
    return s if isinstance(s, Streamed) else None

"""Attach forward hooks for the requested probes only, and always remove them.

``attached(model, bindings, sink)`` is a context manager: on exit (normal or not) every
hook it added is removed; :class:`Taps` keeps the same hooks across forwards. A hook
extracts the value the probe map names, applies the map's reshape/transform, drops the
batch dim, and hands ``(probe, tensor)`` to ``sink``.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from parity.errors import ProbeError
from parity.capture.probemap import TRANSFORMS, WHOLE_OUTPUT, Binding, BlockSpec

Sink = Callable[[str, torch.Tensor], None]


def _where(what: str | Binding) -> str:
    """An error message's subject; a binding is described only when an error needs it (a
    formatted string per probe and forward would cost more than the hook)."""
    return what if isinstance(what, str) else f"probe '{what.probe}' at '{what.module}'"


def _pick(value: Any, index: int | None, what: str | Binding) -> Any:
    if isinstance(value, (tuple, list)):
        i = 0 if index is None else index
        if i >= len(value):
            raise ProbeError(f"{_where(what)}: tuple has {len(value)} elements, map asks for index {i}.")
        return value[i]
    if not isinstance(value, torch.Tensor) and hasattr(value, "to_tuple"):  # HF ModelOutput
        return _pick(value.to_tuple(), index, what)
    return value


def _value(binding: Binding, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
    """What a binding names in one module call, before its transform, head reshape and
    batch removal."""
    spec = binding.spec
    if spec.io == "input":
        if spec.kwarg is not None and spec.kwarg in kwargs:
            return kwargs[spec.kwarg]
        return _pick(args, spec.index, binding) if args else None
    if spec.transform in WHOLE_OUTPUT or (spec.transform is not None and spec.index is None):
        return output  # a transform without an index sees the whole output (e.g. a pair)
    return _pick(output, spec.index, binding)


def extract(binding: Binding, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> torch.Tensor:
    """The tensor a binding names, from one module call, batch dim removed."""
    spec = binding.spec
    return canonical(_value(binding, args, kwargs, output), spec.transform, binding.heads, spec.batched, binding)


def canonical(value: Any, transform: str | None, heads: int | None, batched: bool, what: str | Binding) -> torch.Tensor:
    """Apply a probe map's transform, head reshape and batch removal (every backend's rules)."""
    if transform is not None:
        value = TRANSFORMS[transform](value)
    if not isinstance(value, torch.Tensor):
        raise ProbeError(f"{_where(what)} is a {type(value).__name__}, not a tensor; fix the probe map.")
    if heads is not None:
        value = value.reshape(*value.shape[:-1], heads, value.shape[-1] // heads)
    if batched:
        if value.shape[0] != 1:
            raise ProbeError(f"{_where(what)}: batch size {value.shape[0]}; parity compares batch size 1.")
        value = value[0]
    return value.detach() if value.requires_grad else value


def _get(model: nn.Module, path: str, probe: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise ProbeError(
            f"probe '{probe}': the model has no module '{path}'.",
            note="the probe map does not fit this model; check its module paths",
        ) from None


class Taps:
    """Hooks for ``bindings`` on ``model``, installed once and kept until :meth:`remove`;
    they send to ``self.sink`` and do nothing while it is None. A backend keeps one across
    forwards: registering a few hundred hooks per forward costs more than running them.
    ``modules``: a cache of path -> submodule kept by the caller."""

    def __init__(self, model: nn.Module, bindings: Sequence[Binding], modules: dict[str, nn.Module] | None = None) -> None:
        self.sink: Sink | None = None
        self.take: Any = None  # the sink's take(probe, value, binding), see connect
        self.handles: list[Any] = []
        by_module: dict[str, list[Binding]] = defaultdict(list)
        for b in bindings:
            by_module[b.module].append(b)
        try:
            for path, group in by_module.items():
                module = modules.get(path) if modules is not None else None
                if module is None:
                    module = _get(model, path, group[0].probe)
                    if modules is not None:
                        modules[path] = module
                inputs = [b for b in group if b.spec.io == "input"]
                outputs = [b for b in group if b.spec.io == "output"]
                if inputs:
                    self.handles.append(module.register_forward_pre_hook(_marked(self._pre_hook(inputs)), with_kwargs=True))
                if outputs:
                    self.handles.append(module.register_forward_hook(_marked(self._post_hook(outputs)), with_kwargs=True))
        except BaseException:
            self.remove()
            raise

    def connect(self, sink: Sink | None) -> None:
        """Send to ``sink`` from now on (None: nothing). A sink with a ``take(probe, value,
        binding)`` method gets the probes without a transform as the module produced them,
        before the head reshape and batch removal (views it may not need: see
        parity.capture.sinks.Comparator.take), and applies :func:`canonical` itself."""
        self.sink = sink
        self.take = getattr(sink, "take", None) if sink is not None else None

    def remove(self) -> None:
        handles, self.handles = self.handles, []
        for h in handles:
            h.remove()

    def _send(self, group: list[Binding], args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        sink = self.sink
        if sink is not None:
            take = self.take if _EAGER_CALL is None else None
            for b in group:
                if take is not None and b.spec.transform is None:
                    take(b.probe, _value(b, args, kwargs, output), b)
                    continue
                value = extract(b, args, kwargs, output)
                if _EAGER_CALL is None:
                    sink(b.probe, value)
                else:
                    _emit(sink, b.probe, value)

    def _pre_hook(self, group: list[Binding]) -> Callable[..., None]:
        def hook(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self._send(group, args, kwargs, None)

        return hook

    def _post_hook(self, group: list[Binding]) -> Callable[..., None]:
        b = group[0]
        if len(group) == 1 and b.spec.transform is None:  # the common case, without the loop of _send
            probe, index, tensor = b.probe, b.spec.index, torch.Tensor

            def one(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
                take = self.take
                if take is not None and _EAGER_CALL is None:
                    take(probe, output if type(output) is tensor else _pick(output, index, b), b)
                elif self.sink is not None:
                    self._send(group, args, kwargs, output)

            return one

        def hook(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            self._send(group, args, kwargs, output)

        return hook


def _marked(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn.__parity_tap__ = True  # type: ignore[attr-defined]  # see strip_taps
    return fn


def strip_taps(model: nn.Module) -> None:
    """Remove the probes' hooks from ``model``: a deep copy of a module whose probes were
    installed (a candidate derived while the reference's backend is active), whose copied
    hooks would send the copy's tensors to the original's sink."""
    for m in model.modules():
        for hooks in (m._forward_hooks, m._forward_pre_hooks):
            for key in [k for k, h in hooks.items() if getattr(h, "__parity_tap__", False)]:
                del hooks[key]


@contextmanager
def attached(model: nn.Module, bindings: Sequence[Binding], sink: Sink,
             modules: dict[str, nn.Module] | None = None) -> Iterator[None]:
    """Hook ``bindings`` into ``model`` for the duration of the block."""
    taps = Taps(model, bindings, modules)
    taps.connect(sink)
    try:
        yield
    finally:
        taps.remove()


def _call(sink: Sink, name: str, tensor: torch.Tensor) -> None:
    sink(name, tensor)


_EAGER_CALL: Any = None  # _call wrapped by torch._dynamo.disable, made by outside_graph()


def outside_graph() -> None:
    """Run sinks outside torch.compile'd graphs from now on (a graph break at each probe).

    Called before a hooked model is compiled: sinks keep Python state and launch their own
    kernels, which dynamo should not trace. Importing dynamo is slow, so only then."""
    global _EAGER_CALL
    if _EAGER_CALL is None:
        import torch._dynamo

        _EAGER_CALL = torch._dynamo.disable(_call)


def _emit(sink: Sink, name: str, tensor: torch.Tensor) -> None:
    if _EAGER_CALL is not None and torch.compiler.is_compiling():
        _EAGER_CALL(sink, name, tensor)
    else:
        sink(name, tensor)


@contextmanager
def teacher_forced(model: nn.Module, block: BlockSpec, inputs: Mapping[int, torch.Tensor]) -> Iterator[None]:
    """Replace block i's residual-stream input with ``inputs[i]`` ([T, H], no batch dim).

    Every listed block then runs on the given input during one ordinary forward pass, so
    positions, rotary tables and masks are exactly those of the full run.
    """
    handles: list[Any] = []
    try:
        for i, x in inputs.items():
            module = _get(model, block.module.replace("{i}", str(i)), f"block {i}")
            handles.append(module.register_forward_pre_hook(_forcing_hook(block, x), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def skipped(model: nn.Module, block: BlockSpec, below: int) -> Iterator[None]:
    """Blocks 1..``below``-1 pass their input through instead of computing (block 0 runs, its
    output's structure -- a tensor, or a tuple led by one -- is what the skipped blocks return).
    For a teacher-forced pass that needs block ``below`` and later only: their forced inputs
    make the skipped blocks' outputs irrelevant, so only their cost goes."""
    if below < 2:
        yield
        return
    template: dict[str, Any] = {}
    first = _get(model, block.module.replace("{i}", "0"), "block 0")
    handle = first.register_forward_hook(lambda _m, _a, out: template.setdefault("out", out))
    patched: list[tuple[nn.Module, Any]] = []

    def passthrough(*args: Any, **kwargs: Any) -> Any:
        hs = kwargs.get(block.input, args[0] if args else None)
        out = template.get("out")
        if isinstance(out, torch.Tensor):
            return hs
        if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
            return (hs, *out[1:])
        raise ProbeError(f"cannot skip '{block.module}': block 0 returns {type(out).__name__}.")

    try:
        for i in range(1, below):
            m = _get(model, block.module.replace("{i}", str(i)), f"block {i}")
            patched.append((m, m.__dict__.get("forward")))  # an instance forward comes back after
            m.forward = passthrough  # an instance attribute: nn.Module.__call__ calls it
        yield
    finally:
        handle.remove()
        for m, prev in patched:
            if prev is None:
                del m.forward
            else:
                m.forward = prev


def _forcing_hook(block: BlockSpec, x: torch.Tensor) -> Callable[..., Any]:
    def hook(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        current = kwargs.get(block.input, args[0] if args else None)
        if not isinstance(current, torch.Tensor):
            raise ProbeError(f"cannot teacher-force '{block.module}': no tensor input '{block.input}'.")
        forced = x.to(device=current.device, dtype=current.dtype).reshape(current.shape)
        if block.input in kwargs:
            kwargs[block.input] = forced
        else:
            args = (forced, *args[1:])
        for name in block.reset:
            if name in kwargs:
                kwargs[name] = None
        return args, kwargs

    return hook

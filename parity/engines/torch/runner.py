"""PyTorch module backends.

:class:`ModuleBackend` runs any torch module whose probes a probe map locates. It is the
reference backend (the HF / clean-room model in float32) and the ``torch`` candidate (a
copy of the same weights in another dtype, on another device, with another attention
implementation, optionally compiled).
"""
from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn

from parity.engines.contract import EngineContext
from parity import dtypes
from parity.capture import api

from parity.compare import fused
from parity.capture import probes as canon
from parity.engines.base import Backend, Sink
from parity.errors import BackendError, ProbeError, UsageError
from parity.loading import remote
from parity.capture.hooks import Taps, outside_graph, skipped, strip_taps, teacher_forced
from parity.capture.probemap import BlockSpec, ProbeMap
from parity.loading import rows_attention as rows

ATTN = ("eager", "sdpa")


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a candidate dtype (either spelling; parity.dtypes)."""
    return dtypes.parse(name).torch()


def check_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device} asked for, but this machine has no CUDA GPU.", note="use --device cpu")
        return device
    if device != "cpu":
        raise UsageError(f"unknown device '{device}'.", note="valid devices: cpu, cuda, cuda:N, auto")
    return device


# Canonical rank (no batch dim) of each probe point, to tell a batch dim from none.
_HEADED = {"attn.q", "attn.k", "attn.v", "attn.q_rot", "attn.k_rot"}


class ApiSink:
    """Receives ``parity.probe(name, tensor)`` calls: checks the name, drops a batch dim of 1,
    forwards the requested probes to the run's sink."""

    def __init__(self, wanted: set[str], sink: Sink) -> None:
        self.wanted, self.sink = wanted, sink
        self.emitted: set[str] = set()

    def __call__(self, name: str, tensor: Any) -> None:
        p = canon.parse(name)  # ProbeError for a non-canonical name
        if not isinstance(tensor, torch.Tensor):
            raise ProbeError(f"parity.probe('{name}', ...) got a {type(tensor).__name__}, not a tensor.")
        self.emitted.add(name)
        if name not in self.wanted:
            return
        rank = 3 if p.point in _HEADED else 2
        if tensor.dim() == rank + 1:
            if tensor.shape[0] != 1:
                raise ProbeError(f"parity.probe('{name}'): batch size {tensor.shape[0]}; parity compares batch size 1.")
            tensor = tensor[0]
        elif tensor.dim() != rank:
            raise ProbeError(f"parity.probe('{name}'): shape {list(tensor.shape)} has rank {tensor.dim()}, "
                             f"expected {rank} (or {rank + 1} with a batch dim of 1).")
        self.sink(name, tensor.detach())


_STABLE = ("transformers.", "parity.models.", "torch.nn.")


def _defer_default(model: nn.Module, known: bool) -> bool:
    """Batch the launches of fused statistics (parity.compare.fused.deferred) for this model?

    Only when no module writes a tensor in place after a hook has seen it, which holds for
    Hugging Face modules and parity's own models (tests/test_probes.py checks it with
    version counters); a port (or any other code) may do so, e.g. a fused add + norm
    that updates the residual, so it gets one launch per probe. PARITY_DEFER_STATS=0 or
    1 overrides (1: you vouch for your model)."""
    env = os.environ.get("PARITY_DEFER_STATS")
    if env in ("0", "1"):
        return env == "1"
    return known and all(type(m).__module__.startswith(_STABLE) for m in model.modules())


class ModuleBackend(Backend):

    def __init__(self, model: nn.Module, probe_map: ProbeMap, config: Any, label: str,
                 num_blocks: int, forward_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__(label)
        self.model = model
        self.probe_map = probe_map
        self.config = config
        self.num_blocks = num_blocks
        self.forward_kwargs = {"use_cache": False, **(forward_kwargs or {})}
        self.runner: Any = model  # what is called (a compiled wrapper, for --compile)
        self.positional_ids = False  # call runner(ids) instead of runner(input_ids=ids)
        self.emitted: set[str] = set()  # probes the model sent through parity.probe()
        self._bindings: dict[tuple[str, ...], list[Any]] = {}
        self._modules: dict[str, nn.Module] = {}  # module path -> module, for attaching hooks
        self._taps: tuple[tuple[str, ...], Taps] | None = None  # hooks kept while active
        #: whether captured tensors stay unwritten until the forward ends, so that fused
        #: statistics may be launched in batches (see parity.compare.fused.deferred)
        self.defer_stats = _defer_default(model, known=True)
        #: a teacher-forced pass needing block N and later only skips blocks 1..N-1 (the
        #: targeted pass, parity.run.targeted; parity.capture.hooks.skipped)
        self.skip_blocks_below = 0

    @property
    def device(self) -> torch.device:
        stream = getattr(self.model, "parity_stream", None)  # weights loaded block by block
        if stream is not None:
            return stream.device
        t = first_tensor(self.model)
        return t.device if t is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        stream = getattr(self.model, "parity_stream", None)
        if stream is not None:
            return stream.dtype
        t = first_tensor(self.model)
        return t.dtype if t is not None else torch.float32

    def available_probes_impl(self) -> list[str]:
        return self.probe_map.names(self.num_blocks)

    def deactivate_impl(self) -> None:
        taps, self._taps = self._taps, None
        if taps is not None:
            taps[1].remove()

    def capture_impl(self, input_ids: Any, probes: list[str], sink: Sink) -> Any:
        return self._forward(input_ids, probes, sink)

    def supports_isolation(self) -> bool:
        return self.probe_map.block_spec() is not None

    def capture_isolated_impl(self, input_ids: Any, block_inputs: Mapping[int, Any], probes: list[str], sink: Sink) -> None:
        spec = self.probe_map.block_spec()
        assert spec is not None
        self._forward(input_ids, probes, sink, forcing=(spec, block_inputs))

    def _forward(self, input_ids: Any, probes: list[str], sink: Sink,
                 forcing: tuple[BlockSpec, Mapping[int, Any]] | None = None) -> Any:
        """One forward with hooks for the mapped probes and ``parity.probe`` routed to ``sink``."""
        key = tuple(probes)
        bindings = self._bindings.get(key)
        if bindings is None:  # resolved once per probe list: a forward should cost hooks only
            mapped = set(self.probe_map.names(self.num_blocks))
            bindings = self._bindings[key] = self.probe_map.resolve([p for p in probes if p in mapped], self.config)
        ids = torch.as_tensor(input_ids, dtype=torch.long, device=self.device).reshape(1, -1)
        api_sink = ApiSink(set(probes), sink)
        if self._taps is None or self._taps[0] != key:  # hooks stay installed while the backend is active
            self.deactivate_impl()
            self._taps = (key, Taps(self.model, bindings, self._modules))
        taps = self._taps[1]
        with ExitStack() as stack:
            stack.enter_context(torch.inference_mode())
            stack.enter_context(api.capturing(api_sink))
            if forcing is not None:
                stack.enter_context(teacher_forced(self.model, forcing[0], forcing[1]))
                stack.enter_context(skipped(self.model, forcing[0], self.skip_blocks_below))
            if self.defer_stats:
                stack.enter_context(fused.deferred())
            taps.connect(sink)
            try:
                out = self.runner(ids, **self.forward_kwargs) if self.positional_ids else self.runner(input_ids=ids, **self.forward_kwargs)
            finally:
                taps.connect(None)
        self.emitted |= api_sink.emitted
        return getattr(out, "logits", out)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.label,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "attn": rows.public_name(getattr(self.config, "_attn_implementation", None)
                                     or getattr(self.model, "attn_implementation", None)),
            "compiled": self.runner is not self.model,
            "implementation": remote.describe(self.model),
        }


def first_tensor(model: nn.Module) -> torch.Tensor | None:
    """The model's first parameter, else its first buffer, else None (a module that holds no
    tensors of its own)."""
    t = next(model.parameters(), None)
    return t if t is not None else next(model.buffers(), None)


def set_attn(model: nn.Module, attn: str) -> None:
    if attn not in ATTN:
        raise UsageError(f"unknown attention implementation '{attn}'.", note="valid: " + ", ".join(ATTN))
    if hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation(attn)
        except (ValueError, NotImplementedError) as exc:
            raise BackendError(f"{type(model).__name__} cannot run attention '{attn}': {' '.join(str(exc).split())[:200]}",
                               note="use --attn eager") from None
    elif hasattr(model, "attn_implementation"):
        model.attn_implementation = attn
    else:
        raise BackendError(f"{type(model).__name__} cannot switch attention implementation.")


def derive(reference: nn.Module, dtype: str, device: str, attn: str) -> nn.Module:
    """A copy of the reference weights in ``dtype`` on ``device`` with ``attn``.

    Parameters are cast one by one into the copy (no transient float32 duplicate of the
    model); buffers such as rotary ``inv_freq`` keep their dtype, as they do when an HF
    model is loaded in half precision.
    """
    target = torch_dtype(dtype)
    stream = getattr(reference, "parity_stream", None)  # a streamed reference (parity.loading.streamed)
    if stream is not None:
        model = stream.materialize(target, device).eval()
        set_attn(model, attn)
        return model
    memo: dict[int, object] = {}
    for p in reference.parameters():
        if id(p) not in memo:
            cast = p.detach().to(device=device, dtype=target if p.is_floating_point() else p.dtype, copy=True)
            memo[id(p)] = nn.Parameter(cast, requires_grad=False)
    model = copy.deepcopy(reference, memo).to(device=device).eval()
    strip_taps(model)  # a reference whose probes are installed: their copied hooks would send to its sink
    set_attn(model, attn)
    return model


def make_candidate(reference: nn.Module, probe_map: ProbeMap, config: Any, num_blocks: int, *,
                   dtype: str, device: str, attn: str = "eager", compile: bool = False) -> ModuleBackend:
    """The ``torch`` candidate."""
    model = derive(reference, dtype, device, attn)
    backend = ModuleBackend(model, probe_map, getattr(model, "config", config), "torch", num_blocks)
    if compile:
        outside_graph()
        backend.runner = torch.compile(model)
        backend.defer_stats = False  # compiled graphs manage their own buffers: one launch per probe
    return backend


def create(ctx: EngineContext) -> ModuleBackend:
    """Entry point used by the runner for ``--candidate torch``."""
    o = ctx.options
    return make_candidate(ctx.reference_model, ctx.probe_map, ctx.source.config, ctx.source.num_blocks,
                          dtype=o.dtype, device=ctx.device, attn=o.attn, compile=o.compile)

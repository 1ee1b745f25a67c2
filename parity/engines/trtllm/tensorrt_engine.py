"""TensorRT-LLM TensorRT-engine models (releases ≤1.2): mark canonical probes as network
outputs before the build, and read them back at run time.

Build side (TensorRT-LLM's documented debug flow: ``register_network_output`` on a module,
outputs marked when the engine is built with ``enable_debug_output``)::

    from parity.engines.trtllm.tensorrt_engine import mark_probes
    model = tensorrt_llm.models.LLaMAForCausalLM.from_hugging_face(...)
    handle = mark_probes(model, num_blocks=config.num_hidden_layers,
                         probes=["blocks.*.mlp_out", "logits"])   # globs; default: all
    engine = tensorrt_llm.build(model, BuildConfig(..., enable_debug_output=True))
    handle.remove()

``mark_probes`` wraps ``forward`` of the modules a probe map names (default
parity/probes/trtllm_engine.toml) so that, while the network is traced, each probe value is
registered on the *top-level* model under its canonical name — the network outputs, the
runtime's ``debug_buffer`` keys and ``tllm_debug/PP_*/TP_*/<name>.npy`` files are then
canonical names that ``--candidate dump`` reads without a name map. Marking a few probes
per build is how ``parity bisect`` works with engines: rebuild with other ``probes``.

Run side: ``debug_tensors(runner_or_buffer)`` takes a ``GenerationSession`` /
``ModelRunner`` (its ``session.debug_buffer``) or the dict itself and returns the canonical
tensors; ``write_debug_dump(..., out)`` writes them as a parity dump.

NOT VERIFIED HERE: tensorrt_llm is not installable on the development machine. The wrapping
logic is unit-tested on a stand-in module tree; the engine path runs only where
tensorrt_llm imports (tests marked ``trtllm``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parity.capture import probes as canon
from parity.errors import ProbeError
from parity.capture.probemap import ProbeMap, find_map

DEFAULT_MAP = "trtllm_engine"


def _submodule(model: Any, path: str, probe: str) -> Any:
    mod = model
    for part in path.split("."):
        sub = getattr(mod, "_modules", {}).get(part) if hasattr(mod, "_modules") else None
        if sub is None:
            sub = getattr(mod, part, None)
        if sub is None:
            raise ProbeError(f"probe '{probe}': the TensorRT-LLM model has no module '{path}' (stops at '{part}').",
                             note="pass probe_map= a map whose module paths fit this model")
        mod = sub
    return mod


def _pick(value: Any, index: int | None) -> Any:
    if isinstance(value, (tuple, list)):
        return value[index or 0]
    return value


@dataclass
class MarkHandle:
    """What ``mark_probes`` changed; ``remove()`` restores every wrapped forward."""

    marked: list[str] = field(default_factory=list)
    _restore: list[tuple[Any, Any, bool]] = field(default_factory=list)

    def remove(self) -> None:
        for module, original, had_own in reversed(self._restore):
            if had_own:
                module.__dict__["forward"] = original
            else:
                module.__dict__.pop("forward", None)
        self._restore.clear()


def mark_probes(model: Any, num_blocks: int, probes: Sequence[str] | None = None,
                probe_map: ProbeMap | str = DEFAULT_MAP) -> MarkHandle:
    """Register the chosen canonical probes as network outputs of ``model`` when it is traced."""
    pmap = probe_map if isinstance(probe_map, ProbeMap) else find_map(probe_map)
    names = canon.select(pmap.names(num_blocks), probes)
    by_module: dict[str, list[tuple[str, Any]]] = {}
    for name in names:
        b = pmap.bind(name)
        if b.spec.io != "output" or b.spec.transform is not None:
            raise ProbeError(f"engine probe maps support module outputs only; '{name}' is {b.spec.io}"
                             + (f" with transform {b.spec.transform}" if b.spec.transform else "") + ".")
        by_module.setdefault(b.module, []).append((name, b.spec.index))
    handle = MarkHandle(list(names))
    for path, group in by_module.items():
        module = _submodule(model, path, group[0][0])
        had_own = "forward" in module.__dict__
        original = module.__dict__.get("forward", None) if had_own else None
        wrapped = _registering(model, module.forward, group)
        module.__dict__["forward"] = wrapped
        handle._restore.append((module, original, had_own))
    return handle


def _registering(model: Any, forward: Any, group: list[tuple[str, int | None]]) -> Any:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        out = forward(*args, **kwargs)
        for probe, index in group:
            model.register_network_output(probe, _pick(out, index))
        return out

    return wrapped


def debug_tensors(source: Any) -> dict[str, Any]:
    """Canonical probe tensors from a runtime's debug buffer (session, runner or dict)."""
    buf = source
    for attr in ("session", "debug_buffer"):
        if not isinstance(buf, Mapping) and hasattr(buf, attr):
            buf = getattr(buf, attr)
    if not isinstance(buf, Mapping):
        raise ProbeError("no debug buffer found: run the engine with debug_mode=True (ModelRunner / GenerationSession).")
    out = {k: v for k, v in buf.items() if canon.is_canonical(k)}
    if not out:
        raise ProbeError("the debug buffer holds no canonical probe; was the engine built from a model marked with "
                         "mark_probes and enable_debug_output?")
    return out


def write_debug_dump(source: Any, out: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write the canonical tensors of a debug buffer as a parity dump (``--candidate dump``)."""
    import torch

    from parity.loading.dumps import write_dump

    tensors = {}
    for k, v in debug_tensors(source).items():
        t = v if isinstance(v, torch.Tensor) else torch.as_tensor(v)
        while t.dim() > 2 and t.shape[0] == 1:
            t = t[0]
        tensors[k] = t.detach().cpu()
    return write_dump(out, tensors, {"backend": {"backend": "trtllm-engine"}, **(meta or {})})

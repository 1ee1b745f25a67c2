"""TensorRT-LLM TensorRT-engine models (releases <= 1.2): mark canonical probes as network
outputs for the build, check after the build that every one of them became an output, and
read them back at run time.

Build side (TensorRT-LLM's debug flow: ``Module.register_network_output`` during the trace,
outputs marked by ``tensorrt_llm.build`` when ``BuildConfig.enable_debug_output`` is set --
tensorrt_llm/builder.py, ``build()`` of the 1.x releases)::

    from parity.engines.trtllm_engine import mark_probes
    model = tensorrt_llm.models.QWenForCausalLM.from_hugging_face(...)
    handle = mark_probes(model, probes=["blocks.*.mlp_out"])        # globs; default: all
    engine = tensorrt_llm.build(model, BuildConfig(..., enable_debug_output=True,
                                                   gather_context_logits=True))
    handle.check()          # raises, naming every requested probe that is not an output
    handle.remove()

**Module replacement.** ``build()`` first runs ``optimize_model_with_config``, which replaces
submodules with new instances (``fuse_gate_mlp``: every ``GatedMLP`` becomes a new
``FusedGatedMLP`` by ``setattr(parent, name, fused)`` when ``use_fused_mlp`` is on -- the
default; also ``set_prompt_tuning``, ``parallelize_embedding``, ``to_ootb_moe``:
tensorrt_llm/models/modeling_utils.py of the 1.x releases). A wrapper on the original instances would
never run. So ``mark_probes`` wraps only the top-level model's ``forward``; when the trace
calls it, each probe's module is looked up **by path in the tree as it is then** and
wrapped for the duration of that trace. ``handle.check()`` fails loudly, naming every probe
that was not registered (a module path the optimized model no longer has or never calls).

**logits** is never registered: the model marks its own ``logits`` output
(``DecoderModelForCausalLM.forward``: ``lm_logits.mark_output('logits', ...)``), and a second
output of that name would collide. It is the last token's row only (``[batch, vocab]``)
unless the engine is built with ``gather_context_logits=True``; ``--candidate dump`` reads
either (the one row is compared alone, with a note).

**Pipeline parallelism.** Each stage's ``DecoderLayerList`` holds its own layers as 0..n-1
(``mapping.pp_layers(num_layers)`` gives their global indices), ``vocab_embedding`` exists
on the first stage only and ``ln_f``/``lm_head`` on the last. Probes are registered under
*global* canonical names; modules a stage lacks are skipped (``handle.absent``).

Run side: ``debug_tensors(runner_or_buffer)`` takes a ``GenerationSession`` /
``ModelRunner`` (its ``session.debug_buffer``) or the dict itself and returns the canonical
tensors; ``write_debug_dump(..., out)`` writes them as a parity dump. After ``generate()``
the buffer holds the *last* step's tensors (tensorrt_llm/runtime/generation.py @ 2340c776,
``handle_per_step``: ``debug_buffer`` is replaced by the next step's buffers): generate with
``max_new_tokens=1`` so that it is the context phase, every prompt token.

Written against the real API; tested on a stand-in module tree that is replaced the way
``fuse_gate_mlp`` replaces it (tests/test_trtllm_engine.py). tensorrt_llm cannot be installed
on the development machine; the engine path runs only where it imports (tests marked ``trtllm``).
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
NATIVE = {"logits": "the engine's own 'logits' output (last token only unless gather_context_logits=True)"}


def _submodule(model: Any, path: str) -> Any | None:
    """The module at ``path`` in the tree as it is now, or None when the tree has none there."""
    mod = model
    for part in path.split("."):
        modules = getattr(mod, "_modules", None)
        sub = modules.get(part) if isinstance(modules, dict) else None
        if sub is None:
            sub = getattr(mod, part, None)
        if sub is None:
            return None
        mod = sub
    return mod


def _pick(value: Any, index: int | None) -> Any:
    if isinstance(value, (tuple, list)):
        return value[index or 0]
    return value


@dataclass
class MarkHandle:
    """What ``mark_probes`` asked for and what the trace registered; ``remove()`` restores."""

    requested: list[str] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)
    absent: dict[str, str] = field(default_factory=dict)
    native: dict[str, str] = field(default_factory=dict)
    traces: int = 0
    _restore: list[tuple[Any, Any, bool]] = field(default_factory=list)

    @property
    def marked(self) -> list[str]:
        return list(self.requested)

    def lost(self, outputs: Sequence[str] | None = None) -> list[str]:
        """Requested probes (on this stage) that did not become outputs."""
        got = set(self.registered) if outputs is None else set(self.registered) & set(outputs)
        return [p for p in self.requested if p not in got and p not in self.absent]

    def check(self, outputs: Sequence[str] | None = None) -> None:
        """Raise ProbeError naming every requested probe that is not a network output (pass
        the engine's I/O names as ``outputs`` to check the built engine itself)."""
        if not self.traces:
            raise ProbeError("mark_probes: the model was never traced (tensorrt_llm.build did not run its forward).",
                             note="call handle.check() after tensorrt_llm.build(model, build_config)")
        lost = self.lost(outputs)
        if lost:
            raise ProbeError(f"{len(lost)} requested probe(s) did not become engine outputs: {', '.join(lost)}.",
                             note="their module path is not in the optimized model or is not called there; "
                                  "pass probe_map= a map of the built model's paths")

    def remove(self) -> None:
        for module, original, had_own in reversed(self._restore):
            if had_own:
                module.__dict__["forward"] = original
            else:
                module.__dict__.pop("forward", None)
        self._restore.clear()


def _stage_layers(model: Any, num_blocks: int) -> list[int]:
    """Global indices of the layers this pipeline stage holds (all of them without PP)."""
    mapping = getattr(getattr(model, "config", None), "mapping", None)
    if mapping is not None and hasattr(mapping, "pp_layers"):
        return list(mapping.pp_layers(num_blocks))
    return list(range(num_blocks))


def mark_probes(model: Any, num_blocks: int | None = None, probes: Sequence[str] | None = None,
                probe_map: ProbeMap | str = DEFAULT_MAP) -> MarkHandle:
    """Register the chosen canonical probes as network outputs of ``model`` when it is traced."""
    pmap = probe_map if isinstance(probe_map, ProbeMap) else find_map(probe_map)
    if num_blocks is None:
        num_blocks = int(getattr(getattr(model, "config", None), "num_hidden_layers", 0) or 0)
        if not num_blocks:
            raise ProbeError("mark_probes: the model has no config.num_hidden_layers.", note="pass num_blocks=")
    names = canon.select(pmap.names(num_blocks), probes)
    layers = _stage_layers(model, num_blocks)
    local = {g: j for j, g in enumerate(layers)}
    handle = MarkHandle(requested=[n for n in names if n not in NATIVE])
    handle.native = {n: NATIVE[n] for n in names if n in NATIVE}
    plan: dict[str, list[tuple[str, Any]]] = {}
    for name in handle.requested:
        b = pmap.bind(name)
        if b.spec.io != "output" or b.spec.transform is not None:
            raise ProbeError(f"engine probe maps support module outputs only; '{name}' is {b.spec.io}"
                             + (f" with transform {b.spec.transform}" if b.spec.transform else "") + ".")
        block = canon.parse(name).block
        if block is not None and block not in local:
            handle.absent[name] = "another pipeline stage holds this layer"
            continue
        path = b.module if block is None else pmap.bind(name.replace(f"blocks.{block}.", f"blocks.{local[block]}.", 1)).module
        plan.setdefault(path, []).append((name, b.spec.index))
    _wrap_top(model, plan, handle)
    return handle


def _wrap_top(model: Any, plan: dict[str, list[tuple[str, Any]]], handle: MarkHandle) -> None:
    had_own = "forward" in model.__dict__
    original = model.__dict__.get("forward") if had_own else None
    top_forward = model.forward

    def traced(*args: Any, **kwargs: Any) -> Any:
        handle.traces += 1
        inner: list[tuple[Any, Any, bool]] = []
        try:
            for path, group in plan.items():
                module = _submodule(model, path)
                if module is None:
                    if _stage_absent(model, path):
                        for probe, _ in group:
                            handle.absent.setdefault(probe, f"this pipeline stage has no '{path}'")
                    continue
                inner.append((module, module.__dict__.get("forward"), "forward" in module.__dict__))
                module.__dict__["forward"] = _registering(model, module.forward, group, handle)
            return top_forward(*args, **kwargs)
        finally:
            for module, prev, own in reversed(inner):
                if own:
                    module.__dict__["forward"] = prev
                else:
                    module.__dict__.pop("forward", None)

    model.__dict__["forward"] = traced
    handle._restore.append((model, original, had_own))


def _stage_absent(model: Any, path: str) -> bool:
    """With pipeline parallelism, modules that exist on one stage only (the first stage's
    embedding, the last stage's ln_f and lm_head)."""
    mapping = getattr(getattr(model, "config", None), "mapping", None)
    pp = int(getattr(mapping, "pp_size", 1) or 1)
    return pp > 1 and path.rsplit(".", 1)[-1] in ("vocab_embedding", "ln_f", "lm_head")


def _registering(model: Any, forward: Any, group: list[tuple[str, int | None]], handle: MarkHandle) -> Any:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        out = forward(*args, **kwargs)
        for probe, index in group:
            model.register_network_output(probe, _pick(out, index))
            if probe not in handle.registered:
                handle.registered.append(probe)
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
    """Write the canonical tensors of a debug buffer as a parity dump (``--candidate dump``).

    A ``ModelRunner`` / ``GenerationSession`` that generated more than one token is refused:
    its buffer then holds the last decode step ([1, hidden]), not the prompt."""
    import torch

    from parity.engines.dumps import write_dump

    steps = _max_new_tokens(source)
    if steps is not None and steps > 1:
        raise ProbeError(f"the session generated {steps} tokens: its debug buffer holds the last decode step, "
                         "not the prompt.", note="run generate(..., max_new_tokens=1) before write_debug_dump")
    tensors = {}
    for k, v in debug_tensors(source).items():
        t = v if isinstance(v, torch.Tensor) else torch.as_tensor(v)
        while t.dim() > 2 and t.shape[0] == 1:
            t = t[0]
        tensors[k] = t.detach().cpu()
    ids = (meta or {}).get("input_ids")
    if ids is not None:
        _check_tokens(tensors, len(ids))
    return write_dump(out, tensors, {"backend": {"backend": "trtllm-engine"}, **(meta or {})})


def _max_new_tokens(source: Any) -> int | None:
    session = getattr(source, "session", source)
    value = getattr(session, "max_new_tokens", None)
    return int(value) if isinstance(value, int) else None


def _check_tokens(tensors: dict[str, Any], tokens: int) -> None:
    """Every hidden-state probe covers the prompt (the context phase), not one decode step."""
    for name, t in tensors.items():
        if name != "logits" and t.dim() >= 2 and t.shape[0] != tokens:
            raise ProbeError(f"debug tensor '{name}' covers {t.shape[0]} token(s), the prompt has {tokens}: the buffer "
                             "is not the context phase.", note="generate with max_new_tokens=1")

"""The ``port`` candidate: a user's (or a built-in) port of the model, as a torch module.

``--port path/to/file.py:factory`` names a Python file and a factory in it;
``factory(config, state_dict)`` receives the model config and the reference's state dict
(Hugging Face parameter names, float32) and returns a ``torch.nn.Module`` whose forward takes
``input_ids`` [1, T] and returns logits (a tensor, or an object with ``.logits``).

Probes come from ``parity.probe(name, tensor)`` calls inside the port's forward and/or from
a probe map (``--port-map FILE.toml``, same format as parity/probes/*.toml). The logits the
forward returns are the ``logits`` probe unless the port emits one itself.

Without ``--port``, the family's built-in engine-style port is used
(``parity/models/<family>/port.py:build_port``), with the named faults (``--fault``).
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from parity import faults
from parity.capture import probes as canon
from parity.engines.pytorch import ModuleBackend, Sink, _defer_default, torch_dtype
from parity.errors import BackendError, UsageError
from parity.capture.probemap import ProbeMap, find_map, load_map
from parity.resources import shipped_dir

DEFAULT_FACTORY = "build_port"
BUILTIN_MAP = "engine_port"


def split_spec(spec: str) -> tuple[Path, str]:
    """``file.py:factory`` -> (path, factory); the factory defaults to ``build_port``."""
    path, sep, name = spec.rpartition(":")
    if not sep or not name.isidentifier():
        return Path(spec), DEFAULT_FACTORY
    return Path(path), name


def load_module(path: Path) -> Any:
    """Import a Python file by path, under a private module name (nothing added to sys.path)."""
    if not path.is_file():
        raise BackendError(f"port file '{path}' does not exist.", note="--port path/to/file.py:factory")
    if path.suffix != ".py":
        raise BackendError(f"port file '{path}' is not a .py file.", note="--port path/to/file.py:factory")
    name = "parity_port_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise BackendError(f"cannot import port file '{path}'.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up here
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)  # only while it is imported: its top-level sibling imports work
    try:
        spec.loader.exec_module(module)
    except SystemExit as exc:
        sys.modules.pop(name, None)
        raise BackendError(f"port file '{path}' called sys.exit({exc.code!r}) while importing.",
                           note="a port file defines its factory; guard script code with if __name__ == '__main__'") from None
    except Exception as exc:  # noqa: BLE001 - anything the user's file raises
        sys.modules.pop(name, None)
        raise BackendError(f"port file '{path}' raised while importing: {_one_line(exc)}",
                           note="run it with python to see the traceback, or add --debug") from exc
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def load_factory(spec: str) -> tuple[Callable[..., Any], str]:
    path, name = split_spec(spec)
    module = load_module(path)
    factory = getattr(module, name, None)
    if not callable(factory):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                       and getattr(v, "__module__", None) == module.__name__)
        raise BackendError(f"port file '{path}' has no factory '{name}'.",
                           note="callables defined there: " + (", ".join(found) or "none"))
    return factory, f"{path}:{name}"


def build(factory: Callable[..., Any], label: str, config: Any, state_dict: dict[str, Any]) -> nn.Module:
    try:
        model = factory(config, state_dict)
    except SystemExit as exc:
        raise BackendError(f"port factory {label} called sys.exit({exc.code!r}) while building.",
                           note="the factory returns the port model; it must not exit") from None
    except Exception as exc:  # noqa: BLE001
        raise BackendError(f"port factory {label} raised while building: {_one_line(exc)}",
                           note="the factory gets (config, state_dict) with Hugging Face parameter names") from exc
    if not isinstance(model, nn.Module):
        raise BackendError(f"port factory {label} returned a {type(model).__name__}, not a torch.nn.Module.",
                           note="return the port model (an nn.Module whose forward takes input_ids)")
    if next(model.parameters(), None) is None and next(model.buffers(), None) is None:
        raise BackendError(f"port factory {label} returned a module with no parameters or buffers.",
                           note="register the port's weights as nn.Parameter (or buffers) so that parity can move "
                                "it to the candidate's device and dtype")
    return model


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class PortBackend(ModuleBackend):
    """A port: probes from its map and from ``parity.probe``; what it offers is known after a run."""

    def __init__(self, model: nn.Module, probe_map: ProbeMap, config: Any, label: str, num_blocks: int,
                 source: str, faults_applied: list[str]) -> None:
        super().__init__(model, probe_map, config, label, num_blocks)
        self.defer_stats = _defer_default(model, known=False)  # user code may write captured tensors in place
        self.forward_kwargs = {}
        self.positional_ids = True
        self.source = source
        self.faults_applied = faults_applied
        self.ran = False

    def available_probes_impl(self) -> list[str]:
        if not self.ran:  # before the first run anything canonical may be emitted
            return canon.all_probes(self.num_blocks)
        return canon.in_order(set(self.probe_map.names(self.num_blocks)) | self.emitted | {"logits"})

    def capture_impl(self, input_ids: Any, probes: list[str], sink: Sink) -> Any:
        try:
            logits = self._forward(input_ids, probes, sink)
        except SystemExit as exc:  # the port's own code: an error of the candidate, never exit 0
            raise RuntimeError(f"the port called sys.exit({exc.code!r}) in its forward") from None
        self.ran = True
        if "logits" in probes and "logits" not in self.emitted and "logits" not in self.probe_map.entries:
            if not isinstance(logits, torch.Tensor):
                raise BackendError(f"port {self.source} returned a {type(logits).__name__}, not logits.",
                                   note="forward(input_ids) must return a logits tensor or an object with .logits")
            sink("logits", logits.detach()[0] if logits.dim() == 3 else logits.detach())
        return logits

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "port": self.source, "faults": self.faults_applied}


def builtin_spec(family: str) -> str:
    path = shipped_dir("models") / family / "port.py"
    if not path.is_file():
        raise UsageError(f"there is no built-in port for '{family}'.",
                         note="built-in ports: qwen, llama; or give your own with --port FILE.py:factory")
    return f"{path}:{DEFAULT_FACTORY}"


def create(ctx: Any) -> PortBackend:
    """Entry point used by the runner for ``--candidate port``."""
    o = ctx.options
    n = ctx.source.num_blocks
    specs = faults.parse(o.faults, n)
    port_faults = [s for s in specs if s.fault.target == "port"]
    if o.port is not None and port_faults:
        raise UsageError(f"fault '{port_faults[0].fault.name}' alters the built-in ports, not --port.",
                         note="drop --port to use the built-in port of the family")
    spec = o.port or builtin_spec(ctx.source.family.name)
    factory, label = load_factory(spec)
    if o.port_map:
        pmap = load_map(Path(o.port_map))
    elif o.port is None:
        pmap = find_map(BUILTIN_MAP)
    else:
        pmap = ProbeMap("port", None)
    stream = getattr(ctx.reference_model, "parity_stream", None)  # a streamed reference: a whole float32 copy
    state = (stream.materialize(torch.float32, "cpu") if stream is not None else ctx.reference_model).state_dict()
    model = build(factory, label, ctx.source.config, state)
    model = model.to(device=ctx.device, dtype=torch_dtype(o.dtype)).eval()
    for s in port_faults:
        s.fault.apply(model, s, ctx)
    return PortBackend(model, pmap, ctx.source.config, "port", n, label if o.port else f"built-in {ctx.source.family.name} port",
                       [s.label for s in specs])

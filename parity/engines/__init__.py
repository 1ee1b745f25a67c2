"""Engines: things that run a model and report probe tensors to a sink.

Each engine declares itself (``parity.engines.contract.Engine``: name, flags, early checks,
required packages, factory) in its own folder here, or in another distribution. The
registry is the built-in table below merged with the ``parity.engines`` entry-point group, so
a plain checkout on ``PYTHONPATH`` (no installed metadata) finds the built-ins too, and an
installed package adds an engine without editing parity. Declarations are light; an engine's
heavy modules are imported only when it is used, so a missing optional engine never breaks
``import parity`` or the CLI.
"""
from __future__ import annotations

import importlib
import sys
from importlib.metadata import entry_points

from parity.engines.contract import Engine, EngineContext
from parity.errors import BackendError

__all__ = ["BUILTIN", "GROUP", "Engine", "EngineContext", "all_engines", "info", "load", "names"]

GROUP = "parity.engines"
#: the engines shipped with parity (also declared in pyproject.toml's entry points), in the
#: order `parity doctor` lists them
BUILTIN: dict[str, str] = {
    "torch": "parity.engines.torch:ENGINE",
    "onnxruntime": "parity.engines.onnxruntime:ENGINE",
    "tensorrt": "parity.engines.tensorrt:ENGINE",
    "trtllm": "parity.engines.trtllm:ENGINE",
    "llamacpp": "parity.engines.llamacpp:ENGINE",
    "dump": "parity.engines.dump:ENGINE",
    "cleanroom": "parity.engines.cleanroom:ENGINE",
    "quant": "parity.engines.quant:ENGINE",
    "tp": "parity.engines.tp:ENGINE",
    "port": "parity.engines.port:ENGINE",
}


_FOUND: dict[tuple[object, ...], dict[str, str]] = {}


def _targets() -> dict[str, str]:
    """Engine name -> ``module:attribute`` of its declaration: the built-ins, then the group's
    (read once per import path: scanning every installed distribution takes tens of ms)."""
    key = (entry_points, *sys.path)
    found = _FOUND.get(key)
    if found is None:
        found = dict(BUILTIN)
        for ep in entry_points(group=GROUP):
            found.setdefault(ep.name, ep.value)
        _FOUND.clear()
        _FOUND[key] = found
    return dict(found)


def _declaration(name: str, target: str) -> Engine:
    module, _, attr = target.partition(":")
    try:
        obj = getattr(importlib.import_module(module), attr or "ENGINE")
    except Exception as exc:  # noqa: BLE001 - a broken third-party declaration never breaks the others
        raise BackendError(f"engine '{name}' ({target}) cannot be loaded: {type(exc).__name__}: {exc}",
                           note="fix or uninstall the distribution that registers it") from None
    if not isinstance(obj, Engine) or obj.name != name:
        raise BackendError(f"engine '{name}' ({target}) is not a parity.engines.contract.Engine named '{name}'.")
    return obj


def names() -> list[str]:
    return list(_targets())


def info(name: str) -> Engine:
    """The declaration of engine ``name`` (imports nothing heavy)."""
    targets = _targets()
    if name not in targets:
        raise BackendError(f"unknown candidate '{name}'.", note="valid candidates: " + ", ".join(targets))
    return _declaration(name, targets[name])


def all_engines() -> list[Engine]:
    """Every engine that declares itself without error (a broken one is left out)."""
    out = []
    for name, target in _targets().items():
        try:
            out.append(_declaration(name, target))
        except BackendError:
            continue
    return out


def load(name: str) -> Engine:
    """Engine ``name``, checked to be installed."""
    eng = info(name)
    if not eng.is_available():
        raise BackendError(f"candidate '{name}' needs {', '.join(eng.missing())}, which is not installed.",
                           note=eng.install_note())
    return eng

"""parity: layer-by-layer numerical parity debugger for LLM inference.

``import parity`` is light: torch and the engines are imported only when used.
``parity.probe(name, tensor)`` is the probe API for ports (see parity.api).
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "probe", "is_capturing"]


def __getattr__(name: str) -> Any:
    if name in ("probe", "is_capturing"):
        from parity import api

        return getattr(api, name)
    raise AttributeError(f"module 'parity' has no attribute {name!r}")

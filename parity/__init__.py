"""parity: layer-by-layer numerical parity debugger for LLM inference.

``import parity`` is light: torch and the engines are imported only when used.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]

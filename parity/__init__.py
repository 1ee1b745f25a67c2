"""parity: layer-by-layer numerical parity debugger for LLM inference.

``import parity`` is light: torch and the engines are imported only when used.
``parity.probe(name, tensor)`` is the probe API for ports (see parity.capture.api).

Layout: the package's concepts are subpackages (cli, loading, capture, compare, verdict,
faults, engines, run, report, pytest_plugin); the model code and presets live in the
repository's top-level ``models/`` and the probe maps in ``probes/``, shipped in the wheel
as ``parity/models`` and ``parity/probes``. In a source tree (a checkout on PYTHONPATH, or
an editable install) ``parity.models`` is mounted from ``models/`` here, at import.
"""
from __future__ import annotations

import os
import sys
from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "probe", "is_capturing"]


def _mount_source_tree(name: str) -> None:
    """``parity.<name>`` from the repository's top-level folder when the package has none
    (a wheel ships it inside the package; a source tree keeps it beside the package)."""
    here = os.path.dirname(os.path.abspath(__file__))
    top = os.path.join(os.path.dirname(here), name)
    full = f"{__name__}.{name}"
    if _has_files(os.path.join(here, name)) or not os.path.isdir(top) or full in sys.modules:
        return
    from importlib.machinery import ModuleSpec
    from importlib.util import module_from_spec

    spec = ModuleSpec(full, None, is_package=True)
    spec.submodule_search_locations = [top]
    sys.modules[full] = globals()[name] = module_from_spec(spec)


def _has_files(folder: str) -> bool:
    """A folder holding a file outside bytecode caches: a checkout updated from the layout
    before this one keeps emptied ``parity/models/*/__pycache__`` leftovers, which are not."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        if files:
            return True
    return False


_mount_source_tree("models")


def __getattr__(name: str) -> Any:
    if name in ("probe", "is_capturing"):
        from parity.capture import api

        return getattr(api, name)
    raise AttributeError(f"module 'parity' has no attribute {name!r}")

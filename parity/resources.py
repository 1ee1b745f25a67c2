"""Find data files shipped with parity -- the repository's top-level ``probes/`` and
``models/``, which the wheel ships as ``parity/probes`` and ``parity/models`` -- and in user
folders (``--probe-dir`` / ``PARITY_PROBE_PATH``; ``PARITY_MODEL_PATH`` for presets). User
folders come first, so a user file overrides a shipped one of the same name.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

PROBE_PATH_ENV = "PARITY_PROBE_PATH"
MODEL_PATH_ENV = "PARITY_MODEL_PATH"


def _env_dirs(var: str) -> list[Path]:
    raw = os.environ.get(var, "")
    return [Path(p) for p in raw.split(os.pathsep) if p]


def shipped_dir(kind: str) -> Path:
    """Folder of shipped data: ``probes`` or ``models`` -- inside the installed package (a
    wheel), else beside it (a source tree: a checkout, an editable install)."""
    import parity

    inside = Path(str(resources.files("parity").joinpath(kind)))
    return inside if parity._has_files(str(inside)) else inside.parent.parent / kind


def search_dirs(kind: str, extra: Sequence[str | Path] = ()) -> list[Path]:
    env = PROBE_PATH_ENV if kind == "probes" else MODEL_PATH_ENV
    return [Path(p) for p in extra] + _env_dirs(env) + [shipped_dir(kind)]


def find_file(kind: str, relname: str, extra: Sequence[str | Path] = ()) -> Path | None:
    for d in search_dirs(kind, extra):
        cand = d / relname
        if cand.is_file():
            return cand
    return None

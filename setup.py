"""The wheel's package list, found rather than listed: every package of parity, parity.models
(the top-level models/) with each of its folders (a family's, or data files only such as
models/data/, shipped as a namespace package so that setuptools needs no warning), and
parity.probes (the top-level probes/). Everything else is in pyproject.toml."""
from __future__ import annotations

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent


def packages() -> list[str]:
    own = find_packages(str(ROOT), include=["parity", "parity.*"])
    families = sorted(p.name for p in (ROOT / "models").iterdir() if p.is_dir() and p.name != "__pycache__")
    return [*own, "parity.report.templates", "parity.models", *(f"parity.models.{f}" for f in families), "parity.probes"]


if __name__ == "__main__":
    setup(packages=packages())

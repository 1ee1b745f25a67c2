"""The engine contract: what an engine declares (``Engine``) and what its factory receives
(``EngineContext``).

An engine is one module or folder under ``parity/engines/`` (or a module of another
distribution) exposing an ``Engine`` object, registered in the ``parity.engines``
entry-point group (``toy = "my_pkg.toy:ENGINE"``). The declaration is light: it names the
engine, its flags (one argparse group, also offered by the pytest plugin as ``--parity-*``),
its early checks, and the packages it needs, which is the one list ``parity doctor`` and the
"not installed" error read. Heavy imports happen in ``create`` (and ``prepare``) only.

``prepare`` runs before the reference is built and returns the run options with what the
engine derives (llama.cpp: the GGUF file that runs and so the verdict's dtype); an engine
never assigns to the options it is given.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from parity.errors import UsageError
from parity.options import Opt, RunOptions

if TYPE_CHECKING:
    from torch import nn

    from parity.capture.probemap import ProbeMap
    from parity.engines.base import Backend
    from parity.loading.source import ModelSource

Progress = Callable[[str], object]


@dataclass(frozen=True)
class EngineContext:
    """What an engine's ``create`` receives."""

    options: RunOptions
    source: ModelSource
    probe_map: ProbeMap
    #: the reference model (float32), whose weights a derived candidate copies
    reference_model: nn.Module | None
    device: str
    #: the run's progress (an engine with long steps of its own, an ONNX export, says so)
    progress: Progress | None = None


def unchanged(opts: RunOptions, progress: Progress | None = None) -> RunOptions:
    """The ``prepare`` of an engine that derives nothing."""
    return opts


Factory = Callable[[EngineContext], "Backend"]
Check = Callable[[RunOptions], None]
Prepare = Callable[[RunOptions, "Progress | None"], RunOptions]


def runner_create(module: str) -> Factory:
    """The ``create`` of an engine whose heavy code is ``module``: imports it when a run needs
    the engine, then calls its ``create(ctx)``."""
    def create(ctx: EngineContext) -> Backend:
        import importlib

        return importlib.import_module(module).create(ctx)

    return create


@dataclass(frozen=True)
class Engine:
    """One engine's declaration."""

    name: str
    summary: str
    #: import names of the packages it needs (checked with find_spec, never imported)
    requires: tuple[str, ...]
    #: builds the engine's Backend for a run (the heavy imports happen here)
    create: Factory
    #: how to get what is missing, for the "not installed" line's Note
    install: str = ""
    #: its command-line flags (one argument group; a dest that is not a RunOptions field lands
    #: in ``RunOptions.engine_flags``)
    flags: tuple[Opt, ...] = ()
    #: checks of its flags that need no model, torch or engine package; run by the CLI and the
    #: pytest plugin for every engine (each checks its own flags, whichever candidate runs)
    check: Check | None = None
    #: before the reference is built: the run options with what the engine derives (the
    #: default returns them as they are)
    prepare: Prepare = unchanged

    def install_note(self) -> str:
        doctor = "`parity doctor` lists what is available here"
        return f"{self.install}; {doctor}" if self.install else doctor

    def missing(self) -> list[str]:
        return [p for p in self.requires if importlib.util.find_spec(p) is None]

    def is_available(self) -> bool:
        """True when every required package can be imported (without importing it)."""
        return not self.missing()


def needs_candidate(opts: RunOptions, flags: tuple[tuple[str, str], ...], candidate: str) -> None:
    """An engine's option that does nothing without its candidate is refused, not ignored:
    ``flags`` are (flag, RunOptions field) pairs."""
    for flag, attr in flags:
        if getattr(opts, attr, None) and opts.candidate != candidate:
            raise UsageError(f"{flag} needs --candidate {candidate} (it does nothing with --candidate {opts.candidate}).",
                             note=f"add --candidate {candidate}, or drop {flag}")

"""The backend contract (Polygraphy's runner pattern).

Public methods check state and arguments, then delegate to ``*_impl``:

    with backend:                      # activate() / deactivate()
        backend.capture(ids, probes, sink)

``available_probes()`` says what this backend can expose; asking for anything else is a
ProbeError. What an engine needs installed is its declaration's (parity.engines.contract).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from parity.errors import BackendError, ProbeError

Sink = Callable[[str, Any], None]


class Backend(ABC):
    def __init__(self, label: str) -> None:
        self.label = label
        self.is_active = False
        self._offered: frozenset[str] | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def activate(self) -> None:
        if self.is_active:
            raise BackendError(f"backend '{self.label}' is already active.")
        self._offered = None
        self.activate_impl()
        self.is_active = True

    def deactivate(self) -> None:
        if not self.is_active:
            return
        try:
            self.deactivate_impl()
        finally:
            self.is_active = False

    def __enter__(self) -> Backend:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    # -- work --------------------------------------------------------------------------
    def available_probes(self) -> list[str]:
        return self.available_probes_impl()

    def capture(self, input_ids: Any, probes: Sequence[str], sink: Sink) -> Any:
        """Run one forward pass over ``input_ids``, sending each requested probe to ``sink``.

        Returns the backend's logits (or None when it has none to give).
        """
        if not self.is_active:
            raise BackendError(f"backend '{self.label}' must be activated before capture().")
        if self._offered is None:  # fixed while active; computing it per forward costs per probe
            self._offered = frozenset(self.available_probes())
        missing = [p for p in probes if p not in self._offered]
        if missing:
            raise ProbeError(
                f"backend '{self.label}' does not expose {missing[0]}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "") + ".",
                note="`parity probes` lists what each model provides",
            )
        return self.capture_impl(input_ids, list(probes), sink)

    # -- optional capability: isolated (teacher-forced) blocks ---------------------------
    def supports_isolation(self) -> bool:
        """True when the backend can run its blocks on given inputs (see capture_isolated)."""
        return False

    def capture_isolated(self, input_ids: Any, block_inputs: Mapping[int, Any], probes: Sequence[str], sink: Sink) -> None:
        """One forward pass in which block i runs on ``block_inputs[i]`` (the reference's
        residual stream entering block i, ``[T, H]``) instead of its own upstream output;
        the requested block probes go to ``sink``. Positions and rotary tables are those of
        the full run."""
        if not self.is_active:
            raise BackendError(f"backend '{self.label}' must be activated before capture_isolated().")
        if not self.supports_isolation():
            raise BackendError(f"backend '{self.label}' cannot run blocks in isolation.")
        self.capture_isolated_impl(input_ids, block_inputs, list(probes), sink)

    def capture_isolated_impl(self, input_ids: Any, block_inputs: Mapping[int, Any], probes: list[str], sink: Sink) -> None:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Facts for the report (backend, dtype, device, versions...)."""
        return {"backend": self.label}

    # -- to implement ------------------------------------------------------------------
    def activate_impl(self) -> None:  # noqa: B027 - optional
        pass

    def deactivate_impl(self) -> None:  # noqa: B027 - optional
        pass

    @abstractmethod
    def available_probes_impl(self) -> list[str]: ...

    @abstractmethod
    def capture_impl(self, input_ids: Any, probes: list[str], sink: Sink) -> Any: ...

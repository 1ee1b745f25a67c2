"""The public probe API for ports: ``parity.probe("blocks.3.attn_out", tensor)``.

Like TensorRT-LLM's ``register_network_output``: a port calls it inside its forward to
expose an intermediate tensor under a canonical name. When nothing is capturing it is a
no-op that returns the tensor unchanged. This module imports nothing heavy (no torch).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")
ProbeSink = Callable[[str, Any], None]

_SINK: ContextVar[ProbeSink | None] = ContextVar("parity_probe_sink", default=None)


def probe(name: str, tensor: T) -> T:
    """Expose ``tensor`` as the canonical probe ``name``; returns ``tensor`` unchanged.

    The tensor may carry a leading batch dimension of 1 (``[1, T, H]``) or not (``[T, H]``);
    q/k/v probes are ``[.., T, heads, head_dim]``.
    """
    sink = _SINK.get()
    if sink is not None:
        sink(name, tensor)
    return tensor


def is_capturing() -> bool:
    """True while parity is capturing (lets a port skip work it only does for probes)."""
    return _SINK.get() is not None


@contextmanager
def capturing(sink: ProbeSink) -> Iterator[None]:
    """Route ``probe`` calls to ``sink`` for the duration of the block (used by backends)."""
    token = _SINK.set(sink)
    try:
        yield
    finally:
        _SINK.reset(token)

"""The ``torch`` engine: the reference weights in another dtype, device or attention
implementation (optionally ``torch.compile``d)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from parity.engines.contract import Engine, EngineContext

if TYPE_CHECKING:
    from parity.engines.base import Backend


def create(ctx: EngineContext) -> Backend:
    from parity.engines.torch import runner

    return runner.create(ctx)


ENGINE = Engine(
    name="torch",
    summary="the reference weights in another dtype / device / attention implementation",
    requires=("torch",),
    create=create,
)

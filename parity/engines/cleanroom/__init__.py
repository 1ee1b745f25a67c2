"""The ``cleanroom`` engine: parity's own implementation of the family loaded from the run's
checkpoint (the cross-check of a ``--trust-remote-code`` reference)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from parity.engines.contract import Engine, EngineContext

if TYPE_CHECKING:
    from parity.engines.base import Backend


def create(ctx: EngineContext) -> Backend:
    from parity.engines.cleanroom import runner

    return runner.create(ctx)


ENGINE = Engine(
    name="cleanroom",
    summary="parity's own implementation of the family (clean-room Qwen v1; transformers' class for the others) loaded "
            "from the same checkpoint: the cross-check of a --trust-remote-code reference",
    requires=("torch",),
    create=create,
)

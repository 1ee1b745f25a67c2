"""The ``tp`` engine: the torch candidate sharded over ``--tp N`` processes as TensorRT-LLM
shards it (NCCL on GPUs, gloo on the CPU; ``--tp N`` with the torch candidate selects it)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from parity.engines.contract import Engine, EngineContext

if TYPE_CHECKING:
    from parity.engines.base import Backend


def create(ctx: EngineContext) -> Backend:
    from parity.engines.tp import runner

    return runner.create(ctx)


ENGINE = Engine(
    name="tp",
    summary="the torch candidate sharded over --tp N processes as TensorRT-LLM shards it (NCCL on GPUs, gloo on the CPU)",
    requires=("torch",),
    create=create,
)

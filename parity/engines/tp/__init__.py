"""The ``tp`` engine: the torch candidate sharded over ``--tp N`` processes as TensorRT-LLM
shards it (NCCL on GPUs, gloo on the CPU; ``--tp N`` with the torch candidate selects it)."""
from __future__ import annotations

from parity.engines.contract import Engine, runner_create


ENGINE = Engine(
    name="tp",
    summary="the torch candidate sharded over --tp N processes as TensorRT-LLM shards it (NCCL on GPUs, gloo on the CPU)",
    requires=("torch",),
    create=runner_create("parity.engines.tp.runner"),
)

"""The ``torch`` engine: the reference weights in another dtype, device or attention
implementation (optionally ``torch.compile``d)."""
from __future__ import annotations

from parity.engines.contract import Engine, runner_create


ENGINE = Engine(
    name="torch",
    summary="the reference weights in another dtype / device / attention implementation",
    requires=("torch",),
    create=runner_create("parity.engines.torch.runner"),
)

"""The ``cleanroom`` engine: parity's own implementation of the family loaded from the run's
checkpoint (the cross-check of a ``--trust-remote-code`` reference)."""
from __future__ import annotations

from parity.engines.contract import Engine, runner_create


ENGINE = Engine(
    name="cleanroom",
    summary="parity's own implementation of the family (clean-room Qwen v1; transformers' class for the others) loaded "
            "from the same checkpoint: the cross-check of a --trust-remote-code reference",
    requires=("torch",),
    create=runner_create("parity.engines.cleanroom.runner"),
)

"""Faults of a tensor-parallel candidate (``--tp N``, parity.engines.tp): bugs of one rank's
shard, which every other rank gets right."""
from __future__ import annotations

from typing import Any

from parity.faults.registry import FaultSpec, fault

#: the rank the one-rank faults hit
FAULT_RANK = 1


@fault("tp-kv-offset", f"rank {FAULT_RANK} of a --tp run takes its K/V heads at the wrong offset (rank 0's heads: "
       "the KV-head offset of the shard ignores the rank), in every block or in @BLOCK", target="tp")
def _tp_kv_offset(plan: Any, spec: FaultSpec, ctx: Any) -> None:
    """``plan`` is the rank's shard plan (parity.engines.tp.ShardPlan)."""
    if plan.rank == FAULT_RANK:
        plan.wrong_kv_blocks = None if spec.block is None else {spec.block}
        plan.wrong_kv = True

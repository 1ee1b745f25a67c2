"""Activations of a tensor-parallel run, one part per rank: which canonical probes are split
over ranks (and along which dim), how the parts reassemble into the canonical tensor, each
rank's part compared against the matching slice of the reference, and the rank a divergence
lives on.

In TensorRT-LLM's layout (tensorrt_llm/_torch/modules/linear.py @ ed53795: ``TensorParallelMode``
COLUMN splits a weight's dim 0, ROW its dim 1; COLUMN for q/k/v and gate/up, ROW for o_proj and
down_proj, an all-reduce after each ROW linear) the q/k/v projections are split by heads -- rank r holds heads
``[r * heads / tp, (r + 1) * heads / tp)`` -- and every other canonical probe (the norms'
outputs, attention and MLP outputs after their all-reduce, the residual stream, the logits) is
the same full tensor on every rank. A per-rank dump (TensorRT-LLM's ``tllm_debug/PP_p/TP_t``,
its PyTorch backend's ``rank<N>/``) is read with the same rules.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from parity.capture import probes as canon
from parity.compare.diff import DiffStats, compare

#: probe point -> the dim of its canonical tensor ([T, heads, head_dim]) split over ranks
SHARDED = {"attn.q": 1, "attn.k": 1, "attn.v": 1, "attn.q_rot": 1, "attn.k_rot": 1}


def shard_dim(name: str) -> int | None:
    """The dim probe ``name`` is split along over ranks (None: every rank holds all of it)."""
    return SHARDED.get(canon.parse(name).point)


def assemble(name: str, parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """The canonical tensor of ``name`` from its per-rank parts (in rank order): the shards
    concatenated, or rank 0's copy of a replicated probe."""
    dim = shard_dim(name)
    if dim is None or len(parts) == 1:
        return parts[0]
    return torch.cat([p.to(parts[0].device) for p in parts], dim)


@dataclass
class RankDiff:
    """One rank's part of a probe against the matching slice of the reference."""

    rank: int
    diff: DiffStats
    ref_abs_max: float
    sharded: bool


def rank_diffs(name: str, ref: torch.Tensor, parts: Sequence[torch.Tensor], tol: Any) -> list[RankDiff]:
    """Each rank's part of ``name`` against its slice of ``ref`` (a replicated probe: the
    whole of it), compared where the part lives."""
    dim = shard_dim(name)
    out: list[RankDiff] = []
    start = 0
    for rank, part in enumerate(parts):
        r = ref
        if dim is not None:
            r = ref.narrow(dim, start, part.shape[dim])
            start += part.shape[dim]
        r = r.to(part.device)
        if r.shape != part.shape:
            raise ValueError(f"rank {rank}'s part of '{name}' has shape {list(part.shape)}, its slice of the "
                             f"reference {list(r.shape)}")
        abs_max = float(r.abs().max()) if r.numel() else 0.0
        out.append(RankDiff(rank, compare(r, part, tol), abs_max, dim is not None))
    return out


def failing_ranks(name: str, diffs: Sequence[RankDiff], calib: Any) -> list[int]:
    """The ranks whose part of ``name`` the run's verdict (``calib``, parity.verdict.calibrate)
    fails: a shard is judged against the whole probe's twin, as the probe itself is."""
    return [d.rank for d in diffs if not calib.judge(name, d.diff, d.ref_abs_max)]


def localize(summary: dict[str, Any], per_probe: Mapping[str, Sequence[RankDiff]], calib: Any, tp: int) -> dict[str, Any]:
    """``summary["ranks"]``: which ranks fail at the first divergence, and per probe which
    ranks fail where not all of them do; the summary's message names the rank."""
    failing = {name: failing_ranks(name, diffs, calib) for name, diffs in per_probe.items()}
    partial = {n: r for n, r in failing.items() if r and len(r) < tp}
    info: dict[str, Any] = {"tp": tp, "rank_local": {n: r for n, r in list(partial.items())[:32]}}
    fd = (summary.get("first_divergence") or {}).get("probe")
    if fd is not None and fd in failing:
        bad = failing[fd]
        info["first_divergence"] = {"probe": fd, "failing_ranks": bad,
                                    "sharded": shard_dim(fd) is not None,
                                    "nrmse_by_rank": [d.diff.nrmse for d in per_probe[fd]]}
        if bad and len(bad) < tp:
            ok = [r for r in range(tp) if r not in bad]
            where = "its shard" if shard_dim(fd) is not None else "its copy"
            info["fault_rank"] = bad
            info["message"] = (f"rank{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} of {tp}: {where} of {fd} "
                               f"diverges, rank{'s' if len(ok) > 1 else ''} {', '.join(map(str, ok))} match{'' if len(ok) > 1 else 'es'}")
        elif bad:
            info["message"] = f"every rank of {tp} diverges at {fd}: not one rank's shard"
    if "message" in info and summary.get("message"):
        summary["message"] = f"{summary['message']} | {info['message']}"
    summary["ranks"] = info
    return info

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


def rank_parts(name: str, raw: Sequence[Any], shape: Sequence[int] | None, rule: str | None = None) -> list[torch.Tensor] | None:
    """The per-rank tensors of a dumped probe in canonical form (batch dims of 1 dropped, a flat
    ``[T, heads/tp * head_dim]`` shard as ``[T, heads/tp, head_dim]``), or None when they cannot
    be compared rank by rank: one rank only, partial sums (``rule = "sum"``: a value before its
    all-reduce), or shards of a probe this layout keeps whole."""
    if len(raw) < 2 or shape is None or rule == "sum":
        return None
    rank = len(shape)
    parts = []
    for t in raw:
        while t.dim() > rank and t.shape[0] == 1:
            t = t[0]
        parts.append(t)
    if all(list(p.shape) == list(shape) for p in parts):
        return parts  # replicated: every rank's own copy
    dim = shard_dim(name)
    if dim is None:
        return None
    if rank == 3:
        parts = [p.reshape(p.shape[0], -1, shape[2]) if p.dim() == 2 and p.shape[-1] % shape[2] == 0 else p for p in parts]
    if any(p.dim() != rank for p in parts) or sum(p.shape[dim] for p in parts) != shape[dim]:
        return None
    return parts


class RankCheck:
    """Each rank's part of every probe against the reference, kept until the verdict is known
    (a sink that is a Comparator lends its reference capture and tolerances)."""

    def __init__(self, tp: int) -> None:
        self.tp = tp
        self.diffs: dict[str, list[RankDiff]] = {}

    def record(self, name: str, sink: Any, parts: Sequence[torch.Tensor] | None) -> None:
        ref, tols = getattr(sink, "reference", None), getattr(sink, "tolerances", None)
        if parts is None or ref is None or tols is None or name not in ref:
            return
        try:
            self.diffs[name] = rank_diffs(name, ref.tensor(name), parts, tols.lookup(name))
        except ValueError:  # parts that do not slice the reference: compared whole only
            return

    def annotate(self, summary: dict[str, Any], calib: Any) -> None:
        if self.tp > 1:
            localize(summary, self.diffs, calib, self.tp)


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

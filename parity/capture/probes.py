"""Canonical probe names: one vocabulary for every backend, report and tolerance table.

A probe name says exactly which point of the computation it is (docs/reference/probes.md):
``embed``, ``rope.cos``, ``rope.sin``, ``blocks.{i}.<point>``, ``final_norm``, ``logits``.
This module knows their execution order, which block and component each belongs to, which
probe feeds which (``input_of``, ``stream_into``), and how glob filters select them. It
imports nothing heavy.
"""
from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from parity.errors import ProbeError

HEAD_PROBES: tuple[str, ...] = ("embed", "rope.cos", "rope.sin")
BLOCK_POINTS: tuple[str, ...] = (
    "attn_in",
    "attn.q",
    "attn.k",
    "attn.v",
    "attn.q_rot",
    "attn.k_rot",
    "attn_out",
    "resid_mid",
    "mlp_in",
    "mlp_out",
    "resid_post",
)
TAIL_PROBES: tuple[str, ...] = ("final_norm", "logits")

# Which component a probe's first divergence points at. attn_in / mlp_in are the outputs
# of the block's norms; resid_* are residual adds.
_COMPONENT = {
    "embed": "embed",
    "rope.cos": "rope",
    "rope.sin": "rope",
    "attn_in": "norm",
    "attn.q": "attn",
    "attn.k": "attn",
    "attn.v": "attn",
    "attn.q_rot": "rope",
    "attn.k_rot": "rope",
    "attn_out": "attn",
    "resid_mid": "residual",
    "mlp_in": "norm",
    "mlp_out": "mlp",
    "resid_post": "residual",
    "final_norm": "norm",
    "logits": "logits",
}

# Which probe feeds which, inside a block: the probe whose match shows a point's input was right.
_FED_BY = {
    "attn.q": "attn_in", "attn.k": "attn_in", "attn.v": "attn_in",
    "attn.q_rot": "attn.q", "attn.k_rot": "attn.k",
    "attn_out": "attn_in",
    "resid_mid": "attn_out",
    "mlp_in": "resid_mid",
    "mlp_out": "mlp_in",
    "resid_post": "mlp_out",
}


def stream_into(block: int) -> str:
    """The residual stream entering block ``block``: ``embed`` for block 0, else the previous
    block's ``resid_post`` (``stream_into(num_blocks)`` is what the final norm reads)."""
    return "embed" if block == 0 else f"blocks.{block - 1}.resid_post"


def input_of(name: str, num_blocks: int) -> str | None:
    """The probe that feeds ``name`` (a norm: the stream entering it; a projection: the normed
    input; a residual add: the output added): ``blocks.2.mlp_in`` -> ``blocks.2.resid_mid``,
    ``logits`` -> ``final_norm``. None for ``embed`` and the rotary tables."""
    p = parse(name)
    if p.block is None:
        return {"final_norm": stream_into(num_blocks), "logits": "final_norm"}.get(p.point)
    if p.point == "attn_in":
        return stream_into(p.block)
    fed = _FED_BY.get(p.point)
    return None if fed is None else f"blocks.{p.block}.{fed}"


_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class ProbeName:
    """A parsed canonical name: ``block`` is None outside the blocks."""

    name: str
    block: int | None
    point: str

    @property
    def component(self) -> str:
        return _COMPONENT[self.point]


def parse(name: str) -> ProbeName:
    """Parse a canonical probe name; raise ProbeError for anything else."""
    m = _BLOCK_RE.match(name)
    if m:
        point = m.group(2)
        if point in BLOCK_POINTS:
            return ProbeName(name, int(m.group(1)), point)
    elif name in HEAD_PROBES or name in TAIL_PROBES:
        return ProbeName(name, None, name)
    raise ProbeError(
        f"'{name}' is not a canonical probe name.",
        note="valid names: " + ", ".join(HEAD_PROBES) + ", blocks.{i}.{"
        + ",".join(BLOCK_POINTS) + "}, " + ", ".join(TAIL_PROBES),
    )


def is_canonical(name: str) -> bool:
    try:
        parse(name)
    except ProbeError:
        return False
    return True


def all_probes(num_blocks: int) -> list[str]:
    """Every canonical name for a model of ``num_blocks`` blocks, in execution order."""
    names = list(HEAD_PROBES)
    for i in range(num_blocks):
        names.extend(f"blocks.{i}.{p}" for p in BLOCK_POINTS)
    names.extend(TAIL_PROBES)
    return names


def order_key(name: str) -> tuple[int, int, int]:
    """Sort key giving execution order."""
    p = parse(name)
    if p.block is None:
        if p.point in HEAD_PROBES:
            return (0, 0, HEAD_PROBES.index(p.point))
        return (2, 0, TAIL_PROBES.index(p.point))
    return (1, p.block, BLOCK_POINTS.index(p.point))


def in_order(names: Iterable[str]) -> list[str]:
    return sorted(names, key=order_key)


def select(names: Sequence[str], patterns: Sequence[str] | None) -> list[str]:
    """Names matching any of the glob ``patterns`` (comma-separated allowed), in order.

    ``*`` matches within and across dots, so ``blocks.*.mlp_out`` selects every block's
    MLP output. Raises ProbeError when the patterns select nothing.
    """
    if not patterns:
        return list(names)
    pats = [p.strip() for pat in patterns for p in pat.split(",") if p.strip()]
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in pats)]
    if not chosen:
        raise ProbeError(
            f"--probes {' '.join(pats)!s} matches no probe of this model.",
            note="see `parity probes --model M` for the names, e.g. 'blocks.*.mlp_out', 'logits'",
        )
    return chosen

"""What a hypothesis sees and what it returns.

:class:`Evidence` holds the full tensors of the targeted pass (parity.run.targeted): the
first divergent probe and its upstream inputs, on both sides, as ``[T, ...]`` tensors in the
evidence's working dtype (float64; float32 for a half-precision candidate, whose rounding is
four orders of magnitude above float32's), plus the reference's own weights of the component
at fault (by role) and the facts of the model (head_dim, heads, rotary base, seq_length...). A hypothesis turns the
*reference's* tensors into a prediction of the *candidate's* output under one transformation
users get wrong, fitting its parameter, and reports the residual
``||cand - prediction|| / ||cand||``. :func:`judge` says whether it fits: a residual at the
level of honest rounding (the precision twin's error at that probe, floored by the dtype's
unit roundoff), and well below what the untransformed reference leaves.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from parity.verdict.calibrate import UNIT_ROUNDOFF

#: a fitted residual must be at most this fraction of the identity's (the unexplained error)
EXPLAINS = 0.25
#: ... and at most this many times the precision twin's nrmse at the probe
TWIN_FACTOR = 4.0
#: ... floored at this many unit roundoffs of the candidate's dtype (and an absolute 1e-5)
ROUNDOFF_FACTOR = 8.0


def converted(value: Any, dtype: torch.dtype, device: Any = None) -> Any:
    """``value`` (a tensor, or a list / dict of them) as ``dtype`` on ``device`` (None: where it is)."""
    if isinstance(value, torch.Tensor):
        return value.to(device=value.device if device is None else device, dtype=dtype)
    if isinstance(value, list):
        return [converted(x, dtype, device) for x in value]
    if isinstance(value, dict):
        return {k: converted(x, dtype, device) for k, x in value.items()}
    return value


class Converting(Mapping):
    """A read-only mapping converting each value on first access (a hypothesis reads a few of
    the probes and weights the targeted pass kept: only those are copied and converted)."""

    def __init__(self, raw: Mapping[str, Any], dtype: torch.dtype, device: Any = None) -> None:
        self.raw, self.dtype, self.device = dict(raw), dtype, device
        self.done: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        if key not in self.done:
            self.done[key] = converted(self.raw[key], self.dtype, self.device)
        return self.done[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    def __contains__(self, key: object) -> bool:
        return key in self.raw


@dataclass
class Evidence:
    """Full tensors of the focus probe and its inputs (no batch dim), each converted to
    ``work`` on ``device`` when first read."""

    probe: str
    point: str  # canonical point of the focus probe: "attn_out", "attn.q_rot", "rope.cos", ...
    block: int | None
    ref: dict[str, torch.Tensor]  # canonical probe name -> reference tensor
    cand: dict[str, torch.Tensor]  # canonical probe name -> candidate tensor
    weights: dict[str, Any] = field(default_factory=dict)  # role -> tensor / value (see parity.run.targeted)
    facts: dict[str, Any] = field(default_factory=dict)  # head_dim, num_heads, num_kv_heads, seq_length, ...
    dtype: str = "float32"
    twin_nrmse: float | None = None  # the twin's error at the focus probe (None in float32)
    work: torch.dtype = torch.float64  # what hypotheses compute in
    device: Any = None  # where (None: where each tensor is)

    def __post_init__(self) -> None:
        self.ref = Converting(self.ref, self.work, self.device)  # type: ignore[assignment]
        self.cand = Converting(self.cand, self.work, self.device)  # type: ignore[assignment]
        self.weights = Converting(self.weights, self.work, self.device)  # type: ignore[assignment]

    def name(self, point: str) -> str:
        """The canonical probe name of ``point`` in the focus block (or a head probe)."""
        return point if self.block is None or point in ("embed", "rope.cos", "rope.sin", "final_norm", "logits") \
            else f"blocks.{self.block}.{point}"

    def r(self, point: str) -> torch.Tensor | None:
        return self.ref.get(self.name(point))

    def c(self, point: str) -> torch.Tensor | None:
        return self.cand.get(self.name(point))

    @property
    def out_ref(self) -> torch.Tensor:
        return self.ref[self.probe]

    @property
    def out_cand(self) -> torch.Tensor:
        return self.cand[self.probe]

    @cached_property
    def identity(self) -> float:
        """What the untransformed reference leaves at the focus probe: the error to explain
        (computed once; evaluate, summary and hypotheses read it)."""
        return residual(self.out_cand, self.out_ref)

    @property
    def tolerance(self) -> float:
        """The residual that counts as rounding at this probe."""
        u = UNIT_ROUNDOFF.get(self.dtype, 2.0**-24)
        floor = max(ROUNDOFF_FACTOR * u, 1e-5)
        return max(floor, TWIN_FACTOR * (self.twin_nrmse or 0.0))


@dataclass
class Result:
    """One tested hypothesis: its fitted parameters, residual, and whether it fits."""

    name: str
    family: str
    params: dict[str, Any]
    residual: float
    cause: str  # the cause in one phrase, stated when it fits
    fits: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "params": self.params,
                "residual": self.residual, "fits": self.fits, "cause": self.cause}


# Kernels: hypotheses use the operations a float32 forward already ran (elementwise, sum,
# mean, matmul, softmax...) and take norms as sums of squares; sorting, argmin, atan2 and
# the like run on the host on a few numbers. On a GPU the first call of any other kernel
# family in a process costs up to ~40 ms (CUDA loads its module), more than a whole 7B
# forward at 512 tokens: the targeted pass's budget (benchmarks/targeted.py).


def sumsq(x: torch.Tensor, dim: Any = None) -> torch.Tensor:
    """The sum of squares of ``x`` (over ``dim``; all of it when None)."""
    return (x * x).sum() if dim is None else (x * x).sum(dim=dim)


def l2(x: torch.Tensor) -> float:
    """``||x||`` as a float (one synchronization)."""
    return math.sqrt(max(sumsq(x).item(), 0.0))


def residual(cand: torch.Tensor, pred: torch.Tensor) -> float:
    """``||cand - pred|| / ||cand||`` in the wider of the two dtypes, at least float32 (inf
    when shapes differ or values are not finite). One device synchronization."""
    if cand.shape != pred.shape:
        return math.inf
    dt = torch.promote_types(torch.promote_types(cand.dtype, pred.dtype), torch.float32)
    c = cand.to(dt)
    num2, den2 = torch.stack((sumsq(c - pred.to(dt)), sumsq(c))).tolist()
    if not (math.isfinite(num2) and math.isfinite(den2)):
        return math.inf
    num, den = math.sqrt(num2), math.sqrt(den2)
    if not math.isfinite(num):
        return math.inf
    return num / den if den > 0 else (0.0 if num == 0 else math.inf)


def judge(result: Result, ev: Evidence, identity: float) -> Result:
    result.fits = bool(result.residual <= ev.tolerance and result.residual <= EXPLAINS * identity)
    return result


def named_constants(facts: dict[str, Any]) -> list[tuple[str, float]]:
    """Factors users put in by mistake, by name: sqrt(d), 1/d, 2, 1.5 ..."""
    out: list[tuple[str, float]] = []
    d = facts.get("head_dim")
    if d:
        out += [(f"sqrt(d)={math.sqrt(d):.4g} (d={d})", math.sqrt(d)), (f"1/sqrt(d) (d={d})", 1 / math.sqrt(d)),
                (f"d={d}", float(d)), (f"1/d (d={d})", 1.0 / d)]
    h = facts.get("hidden_size")
    if h:
        out += [(f"sqrt(hidden)={math.sqrt(h):.4g}", math.sqrt(h)), (f"1/sqrt(hidden) (hidden={h})", 1 / math.sqrt(h))]
    out += [("2", 2.0), ("1/2", 0.5), ("1.5", 1.5), ("2/3", 2 / 3), ("sqrt(2)", math.sqrt(2)), ("1/sqrt(2)", 1 / math.sqrt(2)),
            ("-1 (sign flip)", -1.0), ("3", 3.0), ("1/3", 1 / 3), ("4", 4.0), ("1/4", 0.25)]
    return out


def recognise(value: float, facts: dict[str, Any], rel: float = 2e-3) -> str | None:
    """The name of a recognizable factor within ``rel`` of ``value``, or None."""
    for label, c in named_constants(facts):
        if abs(value - c) <= rel * abs(c):
            return label
    return None


#: token rows a costly recompute (attention, MLP) is done on: every row up to this many
#: tokens, else the first 16 and evenly spaced ones up to the last (a shifted mask, logN past
#: seq_length, positions shifted by k all show on such rows; the MLP and norms are per token)
MAX_ROWS = 128


def sample_rows(t: int, device: object) -> torch.Tensor:
    """The row indices of :data:`MAX_ROWS` for ``t`` tokens."""
    if t <= MAX_ROWS:
        return torch.arange(t, device=device)
    head = torch.arange(16)
    spread = torch.linspace(16, t - 1, MAX_ROWS - 16).round().long()
    return torch.unique(torch.cat((head, spread))).to(device)  # on the host


def as_heads(x: torch.Tensor, heads: int | None) -> torch.Tensor:
    """[T, H] -> [T, heads, H/heads]; [T, h, d] unchanged."""
    if x.dim() == 3 or not heads:
        return x
    return x.reshape(x.shape[0], heads, -1)


def golden_min(f: Any, lo: float, hi: float, iters: int = 30) -> float:
    """The x in [lo, hi] minimizing a unimodal ``f`` (golden-section search, one call per step)."""
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(iters):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = f(b)
    return (lo + hi) / 2


def log_fit(f: Any, lo: float, hi: float, points: int = 24, iters: int = 30) -> float:
    """The positive x in [lo, hi] minimizing ``f``: a log grid, then golden search around its best."""
    step = (math.log(hi) - math.log(lo)) / (points - 1)
    grid = [math.log(lo) + i * step for i in range(points)]
    best = min(grid, key=lambda x: f(math.exp(x)))
    return math.exp(golden_min(lambda x: f(math.exp(x)), best - step, best + step, iters))

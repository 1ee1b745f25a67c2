"""MLP hypotheses at ``mlp_out``, recomputed from the reference's ``mlp_in`` and the MLP's own
projections: the activation on the other branch of the gated MLP, another activation (silu,
gelu, gelu-tanh, relu). Which branch the reference gates and with which activation is found by
reproducing the reference itself; a hypothesis only counts when that works."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from parity.verdict.hypotheses.registry import hypothesis
from parity.verdict.hypotheses.core import Evidence, Result, residual

ACTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu, "gelu": F.gelu, "gelu-tanh": lambda x: F.gelu(x, approximate="tanh"), "relu": F.relu,
}


def branches(ev: Evidence) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(branch 0 output, branch 1 output, down weight) of the reference MLP on ``mlp_in``."""
    x = ev.r("mlp_in")
    ups, down = ev.weights.get("mlp.up"), ev.weights.get("mlp.down")
    if x is None or not ups or down is None:
        return None
    x = x.double()
    outs = [x @ w.double().T for w in ups]
    if len(outs) == 1:
        outs = list(outs[0].chunk(2, dim=-1))
    if len(outs) != 2:
        return None
    return outs[0], outs[1], down.double()


def _out(a: torch.Tensor, b: torch.Tensor, down: torch.Tensor, act: str, gate: int) -> torch.Tensor:
    g, o = (a, b) if gate == 0 else (b, a)
    return (ACTS[act](g) * o) @ down.T


@hypothesis("activation", ["mlp_out"])
def activation(ev: Evidence) -> list[Result]:
    got = branches(ev)
    if got is None:
        return []
    a, b, down = got
    ref = ev.out_ref.double()
    fits = [(act, gate) for act in ACTS for gate in (0, 1) if residual(ref, _out(a, b, down, act, gate)) <= 1e-4]
    if not fits:
        return []  # no gated MLP of ours reproduces the reference's
    act0, gate0 = fits[0]
    names = ev.weights.get("mlp.names") or ["branch 0", "branch 1"]
    if len(names) == 1:
        names = [f"{names[0]}[first half]", f"{names[0]}[second half]"]
    c = ev.out_cand.double()
    out = [Result("activation-wrong-branch", "activation", {"activation": act0, "gated": names[1 - gate0], "expected": names[gate0]},
                  residual(c, _out(a, b, down, act0, 1 - gate0)),
                  f"the activation ({act0}) on the wrong branch of the gated MLP: {act0}({names[1 - gate0]}) * {names[gate0]} "
                  f"instead of {act0}({names[gate0]}) * {names[1 - gate0]}")]
    for act in ACTS:
        if act != act0:
            out.append(Result("activation-function", "activation", {"activation": act, "expected": act0},
                              residual(c, _out(a, b, down, act, gate0)), f"{act} instead of {act0} in the MLP"))
    return out

"""MLP hypotheses at ``mlp_out``, recomputed from the reference's ``mlp_in`` and the MLP's own
projections: the activation on the other branch of the gated MLP, another activation (silu,
gelu, gelu-tanh, relu). Which branch the reference gates and with which activation is found by
reproducing the reference itself; a hypothesis only counts when that works. The MLP acts on
each token alone: it is recomputed on core.sample_rows tokens (its cost is three matmuls per
variant, the largest in the targeted pass)."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from parity.verdict.hypotheses.registry import hypothesis
from parity.verdict.hypotheses.core import EXPLAINS, Evidence, Result, residual, sample_rows

ACTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu, "gelu": F.gelu, "gelu-tanh": lambda x: F.gelu(x, approximate="tanh"), "relu": F.relu,
    "sigmoid": torch.sigmoid, "tanh": torch.tanh, "none": lambda x: x,
}
#: the gated product's operands varied: (label, cause, f(act, gated branch, other branch))
FORMS: list[tuple[str, str, Callable[..., torch.Tensor]]] = [
    ("mlp:act(g)*g", "the gated branch used for both factors: {act}({g}) * {g}", lambda f, g, o: f(g) * g),
    ("mlp:act(u)*u", "the other branch used for both factors: {act}({o}) * {o}", lambda f, g, o: f(o) * o),
    ("mlp:act(g)", "the product with {o} left out: {act}({g}) alone", lambda f, g, o: f(g)),
    ("mlp:u", "the activated branch left out: {o} alone", lambda f, g, o: o),
    ("mlp:act(g)/u", "the gated product a division: {act}({g}) / {o}", lambda f, g, o: f(g) / o),
]


def branches(ev: Evidence, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(branch 0 output, branch 1 output, down weight) of the reference MLP on ``mlp_in``'s ``rows``."""
    x = ev.r("mlp_in")
    ups, down = ev.weights.get("mlp.up"), ev.weights.get("mlp.down")
    if x is None or not ups or down is None:
        return None
    x = x[rows]
    outs = [x @ w.T for w in ups]
    if len(outs) == 1:
        outs = list(outs[0].chunk(2, dim=-1))
    if len(outs) != 2:
        return None
    return outs[0], outs[1], down


def _out(a: torch.Tensor, b: torch.Tensor, down: torch.Tensor, act: str, gate: int) -> torch.Tensor:
    g, o = (a, b) if gate == 0 else (b, a)
    return (ACTS[act](g) * o) @ down.T


@hypothesis("activation", ["mlp_out"])
def activation(ev: Evidence) -> list[Result]:
    rows = sample_rows(ev.out_ref.shape[0], ev.out_ref.device)
    got = branches(ev, rows)
    if got is None:
        return []
    a, b, down = got
    ref = ev.out_ref[rows]
    fits = next(((act, gate) for act in ACTS for gate in (0, 1) if residual(ref, _out(a, b, down, act, gate)) <= 1e-4), None)
    if fits is None:
        return []  # no gated MLP of ours reproduces the reference's
    act0, gate0 = fits
    names = ev.weights.get("mlp.names") or ["branch 0", "branch 1"]
    if len(names) == 1:
        names = [f"{names[0]}[first half]", f"{names[0]}[second half]"]
    c = ev.out_cand[rows]
    out = [Result("activation-wrong-branch", "activation", {"activation": act0, "gated": names[1 - gate0], "expected": names[gate0]},
                  residual(c, _out(a, b, down, act0, 1 - gate0)),
                  f"the activation ({act0}) on the wrong branch of the gated MLP: {act0}({names[1 - gate0]}) * {names[gate0]} "
                  f"instead of {act0}({names[gate0]}) * {names[1 - gate0]}")]
    if out[0].residual <= min(ev.tolerance, EXPLAINS * residual(c, ref)):
        return out  # found: the other activations (some a kernel the run never loaded) are not worth their cost
    for act in ACTS:
        if act != act0:
            out.append(Result("activation-function", "activation", {"activation": act, "expected": act0},
                              residual(c, _out(a, b, down, act, gate0)),
                              "no activation in the MLP (the gated branch used as is)" if act == "none"
                              else f"{act} instead of {act0} in the MLP"))
    return out


def _reference_mlp(ev: Evidence, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str, int] | None:
    got = branches(ev, rows)
    if got is None:
        return None
    a, b, down = got
    ref = ev.out_ref[rows]
    fits = next(((act, gate) for act in ACTS for gate in (0, 1) if residual(ref, _out(a, b, down, act, gate)) <= 1e-4), None)
    return None if fits is None else (a, b, down, *fits)


@hypothesis("mlp-variants", ["mlp_out"], generic=True)
def mlp_variants(ev: Evidence) -> list[Result]:
    """The gated product's operands varied, and the MLP run on another tensor than mlp_in."""
    rows = sample_rows(ev.out_ref.shape[0], ev.out_ref.device)
    got = _reference_mlp(ev, rows)
    if got is None:
        return []
    a, b, down, act0, gate0 = got
    names = ev.weights.get("mlp.names") or ["branch 0", "branch 1"]
    if len(names) == 1:
        names = [f"{names[0]}[first half]", f"{names[0]}[second half]"]
    c = ev.out_cand[rows]
    g, o = (a, b) if gate0 == 0 else (b, a)
    gname, oname = names[gate0], names[1 - gate0]
    out = [Result("mlp-form", "activation", {"label": label}, residual(c, form(ACTS[act0], g, o) @ down.T),
                  cause.format(act=act0, g=gname, o=oname)) for label, cause, form in FORMS]
    return out + _inputs(ev, rows, act0, gate0, c)


def _inputs(ev: Evidence, rows: torch.Tensor, act: str, gate: int, c: torch.Tensor) -> list[Result]:
    """The MLP run on another tensor than mlp_in: the un-normed stream, the block's input..."""
    ups, down = ev.weights["mlp.up"], ev.weights["mlp.down"]
    out = []
    for name in ev.ref:
        if name in (ev.probe, ev.name("mlp_in")) or name in ("rope.cos", "rope.sin") or ev.ref[name].shape != ev.r("mlp_in").shape:
            continue
        x = ev.ref[name][rows]
        hs = [x @ w.T for w in ups]
        if len(hs) == 1:
            hs = list(hs[0].chunk(2, dim=-1))
        short = name.split(".", 2)[2] if ev.block is not None and name.startswith(f"blocks.{ev.block}.") else name
        out.append(Result("mlp-input", "activation", {"input": name, "label": f"mlp-input:{name}"},
                          residual(c, _out(hs[0], hs[1], down, act, gate)),
                          f"the MLP applied to {short} instead of its norm's output mlp_in (a wire crossed)"))
    return out

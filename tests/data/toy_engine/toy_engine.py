"""A third-party engine as a distribution would ship it: one module declaring an ``Engine``,
registered in the ``parity.engines`` entry-point group (see toy_parity-0.1.dist-info). It
runs the reference weights in the run's dtype, with its own flag ``--toy-scale``: the final
norm's weight multiplied by it (1, the default: an honest engine; anything else a bug)."""
from __future__ import annotations

from parity.engines.base import Backend
from parity.engines.contract import Engine, EngineContext
from parity.errors import UsageError
from parity.options import Opt, RunOptions


def check(opts: RunOptions) -> None:
    scale = opts.engine_flags.get("toy_scale")
    if scale is not None and scale <= 0:
        raise UsageError(f"--toy-scale {scale}: need a number > 0.")


def create(ctx: EngineContext) -> Backend:
    import torch

    from parity.engines.torch.runner import make_candidate

    o = ctx.options
    backend = make_candidate(ctx.reference_model, ctx.probe_map, ctx.source.config, ctx.source.num_blocks,
                             dtype=o.dtype, device=ctx.device, attn=o.attn)
    backend.label = "toy"
    scale = float(o.engine_flags.get("toy_scale") or 1.0)
    if scale != 1.0:
        norm = dict(backend.model.named_modules())["model.norm"]
        with torch.no_grad():
            norm.weight.mul_(scale)
    return backend


ENGINE = Engine(
    name="toy",
    summary="a toy engine from tests/data: the reference weights, final norm scaled by --toy-scale",
    requires=("torch",),
    create=create,
    check=check,
    flags=(Opt(("--toy-scale",), {"type": float, "metavar": "X", "help": "--candidate toy: scale the final norm (default: 1)"}),),
)

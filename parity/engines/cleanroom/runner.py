"""The ``cleanroom`` candidate: parity's own implementation of the family -- the clean-room
Qwen v1, transformers' class for the others -- loaded from the run's checkpoint, in the
candidate's dtype. Its natural reference is the checkpoint's own modeling code
(``--trust-remote-code``): the first run on a checkpoint that ships one cross-checks the two
implementations on the same weights (probes the remote code's map lacks are not compared).
"""
from __future__ import annotations

import dataclasses

from parity.engines.contract import EngineContext
from parity.engines.torch.runner import ModuleBackend, set_attn, torch_dtype
from parity.capture.probemap import find_map
from parity.errors import UsageError


def create(ctx: EngineContext) -> ModuleBackend:
    """Entry point used by the runner for ``--candidate cleanroom``."""
    o, source = ctx.options, ctx.source
    if source.checkpoint is None:
        raise UsageError("--candidate cleanroom loads the run's checkpoint in parity's own implementation: it needs "
                         "--checkpoint.", note="e.g. parity run --model qwen --checkpoint DIR --trust-remote-code "
                                               "--candidate cleanroom")
    own = dataclasses.replace(source, trust_remote_code=False)
    model = own.build(ctx.device).to(torch_dtype(o.dtype))
    set_attn(model, o.attn)
    pmap = find_map(own.probe_map_name, o.probe_dirs)
    return ModuleBackend(model, pmap, getattr(model, "config", own.config), "cleanroom", own.num_blocks)

"""The targeted pass's teacher-forced capture skips the blocks before the one it needs
(parity.capture.hooks.skipped): same tensors, the skipped blocks not computed."""
from __future__ import annotations

import torch

from parity.engines.torch.runner import ModuleBackend
from parity.capture.sinks import Capture, Recorder
from parity.options import RunOptions
from parity.run import prepare_reference
from parity.run.common import isolation_inputs


def _forced(ref, backend: ModuleBackend, probes: list[str], skip: int) -> dict[str, torch.Tensor]:
    n = ref.source.num_blocks
    inputs = {i: ref.capture.tensor(name) for i, name in enumerate(isolation_inputs(n))}
    cap = Capture("x")
    backend.skip_blocks_below = skip
    with backend:
        backend.capture_isolated(ref.ids, inputs, probes, Recorder(cap, keep=True))
    backend.skip_blocks_below = 0
    return {k: r.tensor for k, r in cap.records.items()}


def test_skipped_blocks_do_not_compute_and_the_forced_block_is_unchanged() -> None:
    ref = prepare_reference(RunOptions(model="llama", candidate="torch", device="cpu"))
    model = ref.model
    backend = ModuleBackend(model, ref.probe_map, model.config, "cand", ref.source.num_blocks)
    probes = ["blocks.3.attn_out", "blocks.3.mlp_out", "blocks.3.resid_post"]
    calls = {"mlp1": 0, "mlp0": 0}
    h1 = model.model.layers[1].mlp.register_forward_hook(lambda *_: calls.__setitem__("mlp1", calls["mlp1"] + 1))
    h0 = model.model.layers[0].mlp.register_forward_hook(lambda *_: calls.__setitem__("mlp0", calls["mlp0"] + 1))
    try:
        full = _forced(ref, backend, probes, 0)
        assert calls == {"mlp1": 1, "mlp0": 1}
        fast = _forced(ref, backend, probes, 3)
        assert calls == {"mlp1": 1, "mlp0": 2}  # block 0 ran (the template), block 1 did not
    finally:
        h0.remove()
        h1.remove()
    assert set(full) == set(fast) == set(probes)
    for p in probes:
        assert torch.equal(full[p], fast[p]), p
    # and the model is whole again: an ordinary forward computes every block
    with torch.inference_mode():
        model(torch.tensor([ref.ids]))
    assert calls == {"mlp1": 1, "mlp0": 2}  # hooks removed; forward restored (no exception)
    assert "forward" not in vars(model.model.layers[1])

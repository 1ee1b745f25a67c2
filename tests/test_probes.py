"""Canonical names, probe maps, hooks."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from parity.capture import probes as canon
from parity.errors import ProbeError
from parity.capture.hooks import attached
from parity.capture.probemap import find_map
from parity.loading.source import ModelSource


def test_parse_and_order() -> None:
    p = canon.parse("blocks.12.attn.q_rot")
    assert (p.block, p.point, p.component) == (12, "attn.q_rot", "rope")
    assert canon.parse("blocks.0.mlp_in").component == "norm"
    names = canon.all_probes(2)
    assert names[:3] == ["embed", "rope.cos", "rope.sin"] and names[-2:] == ["final_norm", "logits"]
    assert canon.in_order(list(reversed(names))) == names
    assert canon.order_key("blocks.2.attn_in") > canon.order_key("blocks.1.resid_post")
    for bad in ("blocks.x.attn_in", "blocks.0.attention", "hidden_states", "blocks.1"):
        with pytest.raises(ProbeError):
            canon.parse(bad)


def test_select_globs() -> None:
    names = canon.all_probes(3)
    assert canon.select(names, ["blocks.*.mlp_out"]) == [f"blocks.{i}.mlp_out" for i in range(3)]
    assert canon.select(names, ["logits,embed"]) == ["embed", "logits"]
    with pytest.raises(ProbeError, match="matches no probe"):
        canon.select(names, ["nothing*"])


@pytest.mark.parametrize("model", ["qwen", "qwen2", "llama"])
def test_maps_cover_the_required_probes(model: str) -> None:
    src = ModelSource.resolve(model)
    names = find_map(src.preset.probe_map).names(src.num_blocks)
    for i in range(src.num_blocks):
        for point in ("attn_in", "attn.q", "attn.k", "attn.v", "attn_out", "resid_mid", "mlp_in", "mlp_out", "resid_post"):
            assert f"blocks.{i}.{point}" in names
    assert {"embed", "rope.cos", "rope.sin", "final_norm", "logits"} <= set(names)


def test_resid_post_is_block_output_not_hf_hidden_states() -> None:
    """resid_post of the last block is *before* the final norm; final_norm is after it."""
    src = ModelSource.resolve("llama")
    model = src.build()
    pmap = find_map("llama")
    got: dict[str, torch.Tensor] = {}
    last = src.num_blocks - 1
    probes = [f"blocks.{last}.resid_post", "final_norm", "blocks.0.resid_mid", "blocks.0.attn_out", "embed"]
    ids = torch.arange(5).reshape(1, -1)
    with torch.no_grad(), attached(model, pmap.resolve(probes, model.config), lambda n, t: got.__setitem__(n, t)):
        out = model(input_ids=ids, output_hidden_states=True)
    hs = out.hidden_states
    assert torch.equal(got["final_norm"], hs[-1][0])  # HF's last hidden state is after the norm
    assert not torch.allclose(got[f"blocks.{last}.resid_post"], hs[-1][0])
    assert torch.allclose(model.model.norm(got[f"blocks.{last}.resid_post"]), got["final_norm"])
    assert torch.allclose(got["blocks.0.resid_mid"], got["embed"] + got["blocks.0.attn_out"])


def test_hooks_removed_even_on_error() -> None:
    src = ModelSource.resolve("qwen")
    model = src.build()
    pmap = find_map("qwen")
    bindings = pmap.resolve(pmap.names(src.num_blocks), model.config)

    def count() -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    assert count() == 0

    def boom(name: str, t: torch.Tensor) -> None:
        if name == "blocks.1.mlp_out":
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError), attached(model, bindings, boom):
        assert count() > 0
        model(input_ids=torch.arange(4).reshape(1, -1))
    assert count() == 0


def test_only_requested_probes_are_hooked() -> None:
    src = ModelSource.resolve("qwen")
    model = src.build()
    pmap = find_map("qwen")
    with attached(model, pmap.resolve(["blocks.2.mlp_out"], model.config), lambda n, t: None):
        hooked = [n for n, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]
    assert hooked == ["transformer.h.2.mlp"]


@pytest.mark.parametrize("model", ["qwen", "qwen2", "llama"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_shipped_models_never_write_a_captured_tensor_in_place(model: str, attn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batched (deferred) statistics read each probe after the forward went on; that is
    only right if nothing writes a captured tensor in place afterwards. Version counters
    (kept under no_grad, not under inference_mode) show it for every shipped model."""
    from parity.engines.torch import runner as pt

    src = ModelSource.resolve(model)
    ref = src.build(attn=attn)
    pmap = find_map(src.preset.probe_map)
    names = pmap.names(src.num_blocks)
    backend = pt.ModuleBackend(ref, pmap, ref.config, "reference", src.num_blocks)
    assert backend.defer_stats
    monkeypatch.setattr(pt.torch, "inference_mode", torch.no_grad)
    seen: list[tuple[str, torch.Tensor, int]] = []
    with backend:
        backend.capture(torch.arange(6), names, lambda n, t: seen.append((n, t, t._version)))
    assert {n for n, _, _ in seen} == set(names)
    changed = [n for n, t, v in seen if t._version != v]
    assert not changed, f"written in place after capture: {changed}"


def test_batched_statistics_only_where_vouched_for(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch import nn

    from parity.engines.torch.runner import _defer_default

    class Port(nn.Module):  # user code: it might update a captured residual in place
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    hf = ModelSource.resolve("qwen2").build()
    assert _defer_default(hf, known=True)
    assert not _defer_default(nn.Sequential(Port()), known=True)
    assert not _defer_default(hf, known=False)
    monkeypatch.setenv("PARITY_DEFER_STATS", "1")
    assert _defer_default(nn.Sequential(Port()), known=False)
    monkeypatch.setenv("PARITY_DEFER_STATS", "0")
    assert not _defer_default(hf, known=True)


def test_import_and_help_do_not_import_torch() -> None:
    code = ("import sys, parity, parity.cli, parity.options, parity.capture.probes, parity.engines, parity.faults\n"
            "heavy = [m for m in ('torch', 'transformers', 'pandas', 'rich') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run([sys.executable, "-m", "parity", "--help"], check=True, capture_output=True, text=True)
    assert "run" in out.stdout and "probes" in out.stdout


def test_user_probe_dir_overrides(tmp_path, monkeypatch) -> None:
    (tmp_path / "llama.toml").write_text('[probes]\n"logits" = { module = "lm_head" }\n')
    monkeypatch.setenv("PARITY_PROBE_PATH", str(tmp_path))
    assert find_map("llama").names(2) == ["logits"]
    (tmp_path / "bad.toml").write_text('[probes]\n"blocks.{i}.mlp" = { module = "x" }\n')
    with pytest.raises(ProbeError, match="not a canonical probe name"):
        find_map("bad")


def test_a_copy_made_while_probes_are_installed_keeps_none_of_them() -> None:
    """A candidate derived (deep-copied) while the reference's probes are installed sends the
    original's sink nothing and runs its own weights; a block skipped by the targeted pass gets
    back the instance forward it had (another tool's wrapper)."""
    from parity.capture.hooks import Taps, skipped
    from parity.capture.probemap import BlockSpec
    from parity.engines.torch.runner import derive

    src = ModelSource.resolve("llama")
    model = src.build()
    pmap = find_map("llama")
    ids = torch.arange(6).reshape(1, -1)
    got: dict[str, torch.Tensor] = {}
    taps = Taps(model, pmap.resolve(pmap.names(src.num_blocks), model.config))
    taps.connect(lambda n, t: got.__setitem__(n, t.clone()))
    try:
        copied = derive(model, "fp32", "cpu", "eager")
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in copied.modules())
        with torch.no_grad():
            copied.lm_head.weight.mul_(3)
        out = copied(input_ids=ids).logits
        assert got == {}
        model(input_ids=ids)
        assert torch.allclose(out[0], 3 * got["logits"], atol=1e-5)  # its own weights, the original's probes
        spec = pmap.block_spec()
        assert isinstance(spec, BlockSpec)
        block1 = model.model.layers[1]
        block1.forward = own = block1.forward  # an instance forward, as accelerate's hooks install
        with skipped(model, spec, 2):
            assert block1.__dict__["forward"] is not own
        assert block1.__dict__["forward"] is own
    finally:
        taps.remove()

"""mark_probes against a module tree that the build replaces the way TensorRT-LLM's
``fuse_gate_mlp`` replaces it, and the post-build check that names every lost probe.

``Module`` below is a STAND-IN written for this test (tensorrt_llm cannot be installed here),
with the semantics of tensorrt_llm/module.py @ 2a9abd95 that matter: child modules live in
``_modules`` (``__setattr__`` puts a Module there, ``__getattr__`` finds it), ``__call__``
calls ``self.forward``, ``register_network_output`` / ``named_network_outputs`` (prefixed by
the module path). ``build`` mirrors tensorrt_llm/builder.py ``build()`` (1.x): first
``optimize_model_with_config`` (here: replace every ``GatedMLP`` with a *new* ``FusedGatedMLP``
by ``setattr(parent, name, fused)``, as models/modeling_utils.py (1.x) does), then trace the
model, then mark every ``named_network_outputs()`` entry as an engine output.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from parity.engines.trtllm_engine import mark_probes, write_debug_dump
from parity.errors import ProbeError


class Module:
    def __init__(self) -> None:
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "_network_outputs", {})

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, Module):
            self._modules[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        modules = self.__dict__.get("_modules", {})
        if name in modules:
            return modules[name]
        raise AttributeError(name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def register_network_output(self, name: str, value: Any) -> None:
        self._network_outputs[name] = value

    def named_modules(self, prefix: str = ""):  # noqa: ANN201
        yield prefix, self
        for n, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{n}" if prefix else n)

    def named_network_outputs(self):  # noqa: ANN201
        for name, module in self.named_modules():
            for n, out in module._network_outputs.items():
                yield (f"{name}.{n}" if name else n), out


class Fn(Module):
    def __init__(self, fn: Any) -> None:
        super().__init__()
        object.__setattr__(self, "fn", fn)

    def forward(self, x: Any) -> Any:
        return self.fn(x)


class GatedMLP(Fn):
    pass


class FusedGatedMLP(Fn):
    pass


class Layer(Module):
    def __init__(self, k: int) -> None:
        super().__init__()
        self.input_layernorm = Fn(lambda x: x + 0.5)
        self.attention = Fn(lambda x: (x * 2, "presents"))
        self.post_layernorm = Fn(lambda x: x + 0.25)
        self.mlp = GatedMLP(lambda x: x * 3 + k)

    def forward(self, x: Any) -> Any:
        h = x + self.attention(self.input_layernorm(x))[0]
        return (h + self.mlp(self.post_layernorm(h)), "presents")


class Layers(Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        for j in range(n):
            setattr(self, str(j), Layer(j))

    def forward(self, x: Any) -> Any:
        for m in self._modules.values():
            x = m(x)[0]
        return x


class Decoder(Module):
    def __init__(self, n: int, first: bool = True, last: bool = True) -> None:
        super().__init__()
        if first:
            self.vocab_embedding = Fn(lambda x: x + 100)
        self.layers = Layers(n)
        if last:
            self.ln_f = Fn(lambda x: x / 2)

    def forward(self, x: Any) -> Any:
        x = self.vocab_embedding(x) if "vocab_embedding" in self._modules else x
        x = self.layers(x)
        return self.ln_f(x) if "ln_f" in self._modules else x


class CausalLM(Module):
    def __init__(self, layers: int = 2, config: Any = None, first: bool = True, last: bool = True) -> None:
        super().__init__()
        object.__setattr__(self, "config", config or SimpleNamespace(num_hidden_layers=layers, mapping=None))
        self.transformer = Decoder(layers, first, last)
        if last:
            self.lm_head = Fn(lambda x: x * 10)

    def forward(self, x: Any) -> Any:
        h = self.transformer(x)
        if "lm_head" in self._modules:
            self.register_network_output("logits", self.lm_head(h))  # the model marks its own output
        return h


def fuse_gate_mlp(model: Module) -> None:
    """Every GatedMLP replaced by a new FusedGatedMLP instance (same function)."""
    for _, layer in list(model.named_modules()):
        for name, child in list(layer._modules.items()):
            if isinstance(child, GatedMLP):
                setattr(layer, name, FusedGatedMLP(child.fn))


def build(model: CausalLM, x: float = 1.0, optimize: Any = fuse_gate_mlp) -> list[str]:
    optimize(model)
    model(x)
    return [k for k, _ in model.named_network_outputs()]


def test_probes_survive_the_mlp_fusion() -> None:
    model = CausalLM()
    handle = mark_probes(model)
    outputs = build(model)
    handle.check(outputs)
    assert isinstance(model.transformer.layers._modules["0"].mlp, FusedGatedMLP)  # the tree was replaced
    got = dict(model.named_network_outputs())
    assert {"blocks.0.mlp_out", "blocks.1.mlp_out"} <= set(got)
    # x=1: embed 101; block0: attn_in 101.5, attn_out 203, resid_mid 304, mlp_in 304.25, mlp_out 912.75 + 0
    assert (got["embed"], got["blocks.0.attn_out"], got["blocks.0.mlp_in"], got["blocks.0.mlp_out"]) == (101, 203, 304.25, 912.75)
    assert outputs.count("logits") == 1 and "logits" in handle.native  # the model's own, not a duplicate
    handle.remove()
    assert "forward" not in model.__dict__


def test_wrapping_instances_before_the_build_would_lose_them() -> None:
    """What an instance wrapper sees: the pre-fusion GatedMLP is never called by the build."""
    model = CausalLM()
    before = model.transformer.layers._modules["0"].mlp
    calls = []
    before.__dict__["forward"] = lambda x: calls.append(x) or before.fn(x)
    build(model)
    assert calls == []


def test_a_probe_the_optimized_model_lost_is_named() -> None:
    model = CausalLM()
    handle = mark_probes(model)

    def drop_post_norm(m: Module) -> None:  # an optimization that folds post_layernorm away
        fuse_gate_mlp(m)
        for layer in m.transformer.layers._modules.values():
            del layer._modules["post_layernorm"]
            layer.__dict__["forward"] = lambda x, layer=layer: (x + layer.attention(layer.input_layernorm(x))[0], None)

    build(model, optimize=drop_post_norm)
    with pytest.raises(ProbeError, match=r"did not become engine outputs: blocks\.0\.mlp_in, blocks\.0\.mlp_out, "
                                         r"blocks\.1\.mlp_in, blocks\.1\.mlp_out"):
        handle.check()


def test_check_against_the_engine_outputs_and_before_any_trace() -> None:
    model = CausalLM()
    handle = mark_probes(model, probes=["blocks.*.mlp_out"])
    with pytest.raises(ProbeError, match="never traced"):
        handle.check()
    outputs = build(model)
    with pytest.raises(ProbeError, match=r"blocks\.1\.mlp_out"):
        handle.check([o for o in outputs if o != "blocks.1.mlp_out"])


class PPMapping:
    """Mapping.pp_layers of tensorrt_llm/mapping.py (1.x): torch.tensor_split over pp_size."""

    def __init__(self, pp_size: int, pp_rank: int) -> None:
        self.pp_size, self.pp_rank = pp_size, pp_rank

    def pp_layers(self, n: int) -> list[int]:
        per = [n // self.pp_size + (1 if r < n % self.pp_size else 0) for r in range(self.pp_size)]
        start = sum(per[:self.pp_rank])
        return list(range(start, start + per[self.pp_rank]))


@pytest.mark.parametrize("rank", [0, 1])
def test_pipeline_stage_registers_global_names(rank: int) -> None:
    cfg = SimpleNamespace(num_hidden_layers=4, mapping=PPMapping(2, rank))
    model = CausalLM(layers=2, config=cfg, first=rank == 0, last=rank == 1)
    handle = mark_probes(model)  # num_blocks from the config: the global 4
    handle.check(build(model))
    got = set(dict(model.named_network_outputs())) - {"logits"}
    blocks = {f"blocks.{i}.{p}" for i in ((0, 1) if rank == 0 else (2, 3))
              for p in ("attn_in", "attn_out", "mlp_in", "mlp_out", "resid_post")}
    assert got == blocks | ({"embed"} if rank == 0 else {"final_norm"})
    assert set(handle.absent) >= {f"blocks.{i}.mlp_out" for i in ((2, 3) if rank == 0 else (0, 1))}


def test_write_debug_dump_refuses_a_longer_generation(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    session = SimpleNamespace(max_new_tokens=8, debug_buffer={"blocks.0.mlp_out": torch.zeros(1, 4)})
    with pytest.raises(ProbeError, match="last decode step"):
        write_debug_dump(SimpleNamespace(session=session), tmp_path / "d")
    one = SimpleNamespace(max_new_tokens=1, debug_buffer={"blocks.0.mlp_out": torch.zeros(1, 4)})
    with pytest.raises(ProbeError, match="covers 1 token"):
        write_debug_dump(SimpleNamespace(session=one), tmp_path / "d", {"input_ids": [1, 2, 3]})

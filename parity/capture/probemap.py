"""Probe maps: where each canonical probe lives in a module tree (data in parity/probes).

A map entry says: module path, input or output, which tuple element / positional input /
keyword, and an optional transform. ``resolve`` expands ``blocks.{i}`` entries for a model
with N blocks and returns one :class:`Binding` per concrete probe.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parity.capture import probes as canon
from parity.errors import ProbeError
from parity.resources import find_file, search_dirs

# Named transforms a map may apply to the extracted value (before batch removal).
TRANSFORMS: dict[str, Callable[[Any], Any]] = {}
# Transforms that receive the module's whole output (a tuple), not the ``index``-th element.
WHOLE_OUTPUT: set[str] = set()


def transform(name: str) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
    """Register a named transform usable as ``transform = "name"`` in probe maps."""

    def deco(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        TRANSFORMS[name] = fn
        return fn

    return deco


@transform("add_hidden_residual")
def _add_hidden_residual(value: Any) -> Any:
    """``(hidden, residual) -> hidden + residual``: the residual stream leaving a decoder
    layer whose residual add is fused into the next norm (TensorRT-LLM's PyTorch backend)."""
    return value[0] + value[1]


WHOLE_OUTPUT.add("add_hidden_residual")


def _pair(value: Any, what: str) -> tuple[Any, Any]:
    if not isinstance(value, (tuple, list)) or len(value) < 2:
        raise ProbeError(f"transform '{what}' needs a (hidden, residual) pair, got {type(value).__name__}.")
    return value[0], value[1]


# TensorRT-LLM-style decoder layers fuse the residual add into the next norm and pass
# ``(hidden, residual)`` around. With no ``index``, a transform receives the whole value.
@transform("hidden")
def _hidden(value: Any) -> Any:
    """Element 0 of a fused ``(hidden, residual)`` pair."""
    return _pair(value, "hidden")[0]


@transform("residual")
def _residual(value: Any) -> Any:
    """Element 1 of a fused ``(hidden, residual)`` pair: the residual stream."""
    return _pair(value, "residual")[1]


@transform("hidden_plus_residual")
def _hidden_plus_residual(value: Any) -> Any:
    """``hidden + residual``: what the next fused add+norm computes, i.e. the stream
    leaving a layer that returns ``(mlp_out, resid_mid)``."""
    h, r = _pair(value, "hidden_plus_residual")
    return h + r


@dataclass(frozen=True)
class BlockSpec:
    """How to feed one block a given residual-stream input (teacher forcing).

    ``module``: the block (``{i}`` = index); ``input``: keyword of its stream input (the first
    positional argument is used when the call does not pass it by keyword); ``reset``:
    keywords set to None (e.g. a fused layer's incoming ``residual``).
    """

    module: str
    input: str = "hidden_states"
    reset: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProbeSpec:
    module: str
    io: str = "output"
    index: int | None = None
    kwarg: str | None = None
    heads: str | None = None
    batched: bool = True
    transform: str | None = None


@dataclass(frozen=True)
class Binding:
    """One concrete probe bound to one concrete module."""

    probe: str
    module: str
    spec: ProbeSpec
    heads: int | None = None


@dataclass
class ProbeMap:
    name: str
    path: Path | None
    entries: dict[str, ProbeSpec] = field(default_factory=dict)
    architecture: str | None = None
    block: BlockSpec | None = None

    def block_spec(self) -> BlockSpec | None:
        """The block spec: the ``[block]`` table, else the module of ``resid_post``."""
        if self.block is not None:
            return self.block
        spec = self.entries.get("blocks.{i}.resid_post")
        if spec is None or spec.io != "output" or spec.transform is not None:
            return None
        return BlockSpec(spec.module)

    def names(self, num_blocks: int) -> list[str]:
        """Canonical names this map provides for a model of ``num_blocks`` blocks."""
        out = [n for n in self.entries if "{i}" not in n]
        for pattern in (n for n in self.entries if "{i}" in n):
            out.extend(pattern.replace("{i}", str(i)) for i in range(num_blocks))
        return canon.in_order(out)

    def bind(self, probe: str, config: Any = None) -> Binding:
        p = canon.parse(probe)
        key = probe if p.block is None else f"blocks.{{i}}.{p.point}"
        spec = self.entries.get(key)
        if spec is None:
            raise ProbeError(f"probe map '{self.name}' has no entry for '{probe}'.")
        module = spec.module.replace("{i}", str(p.block)) if p.block is not None else spec.module
        heads = None
        if spec.heads is not None:
            heads = getattr(config, spec.heads, None) if config is not None else None
            if not isinstance(heads, int):
                raise ProbeError(
                    f"probe map '{self.name}': '{probe}' reshapes by config attribute "
                    f"'{spec.heads}', which the model config lacks."
                )
        return Binding(probe, module, spec, heads)

    def resolve(self, probes: Sequence[str], config: Any = None) -> list[Binding]:
        return [self.bind(p, config) for p in probes]


def _spec_from(name: str, raw: Any, where: str) -> ProbeSpec:
    """One entry (already checked by parity.capture.schema): its transform must be known."""
    tr = raw.transform
    if tr is not None and tr not in TRANSFORMS:
        raise ProbeError(
            f"{where}: probe '{name}' uses unknown transform {tr!r}.",
            note="known transforms: " + (", ".join(sorted(TRANSFORMS)) or "none"),
        )
    return ProbeSpec(**raw.model_dump(exclude_unset=True))


def load_map(path: Path, name: str | None = None) -> ProbeMap:
    from parity.validate import read_toml

    return map_from_dict(read_toml(path, ProbeError, "probe map"), str(path), name or path.stem, path)


def map_from_dict(data: dict[str, Any], where: str, name: str, path: Path | None = None) -> ProbeMap:
    """A probe map from its parsed TOML (checked by parity.capture.schema)."""
    from parity.capture.schema import check_probe_map

    if not isinstance(data, dict) or not isinstance(data.get("probes"), dict) or not data["probes"]:
        raise ProbeError(f"{where}: no [probes] table.")
    for key in data["probes"]:
        canon.parse(key.replace("{i}", "0"))  # every key must be a canonical name
    checked = check_probe_map(data, f"probe map {where}")
    entries = {key: _spec_from(key, raw, where) for key, raw in checked.probes.items()}
    block = None
    if checked.block is not None:
        b = checked.block
        block = BlockSpec(b.module, b.input, tuple(b.reset))
    return ProbeMap(name, path, entries, checked.architecture, block)


def find_map(name: str, extra_dirs: Sequence[str | Path] = ()) -> ProbeMap:
    """Load the probe map ``name`` (a file path, or a name looked up in probe folders)."""
    as_path = Path(name)
    if as_path.suffix == ".toml" and as_path.is_file():
        return load_map(as_path)
    found = find_file("probes", f"{name}.toml", extra_dirs)
    if found is None:
        dirs = ", ".join(str(d) for d in search_dirs("probes", extra_dirs))
        raise ProbeError(f"no probe map named '{name}'.", note=f"searched {dirs}")
    return load_map(found, name)

"""``[tool.parity]`` in the user's pyproject.toml: run-option defaults and tolerance tables.

Layout (documented in docs/guide/pytest-plugin.md)::

    [tool.parity]                      # defaults for any run option (model, dtype, tokens, ...)
    model = "qwen"
    tokens = 8

    [tool.parity.tolerances]           # every dtype: glob pattern -> {atol, rtol}
    "blocks.*.mlp_out" = {atol = 1e-2, rtol = 1e-2}

    [tool.parity.tolerances.fp16]      # only fp16 runs (fp32, fp16, bf16; float16 etc. too)
    default = {atol = 3e-2, rtol = 3e-2}
    "logits" = {atol = 5e-2, rtol = 5e-2}

Tables stack on the model preset's table for the run's dtype: the preset first, then
``[tool.parity.tolerances]``, then the dtype's sub-table, then ``assert_parity(tolerances=)``;
a later layer replaces the same pattern (and ``default``), and at lookup the most specific
matching pattern wins. Imports nothing heavy.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from parity import dtypes
from parity.capture import probes as canon
from parity.errors import UsageError
from parity.options import RunOptions
from parity.compare.tolerances import ToleranceTable, table_from

OPTION_KEYS = {f.name: f for f in fields(RunOptions)}
WHERE = "[tool.parity]"
#: block indices tried when checking that a pattern can match some probe at all
_MAX_BLOCKS = 512


@dataclass
class ParityConfig:
    options: dict[str, Any] = field(default_factory=dict)
    tolerances: dict[str, Any] = field(default_factory=dict)  # general patterns
    per_dtype: dict[str, dict[str, Any]] = field(default_factory=dict)  # fp16 -> patterns
    path: Path | None = None


def find_pyproject(rootpath: Path, inipath: Path | None) -> Path | None:
    if inipath is not None and inipath.name == "pyproject.toml":
        return inipath
    cand = rootpath / "pyproject.toml"
    return cand if cand.is_file() else None


def load(path: Path | None) -> ParityConfig:
    if path is None:
        return ParityConfig()
    from parity.validate import parse_toml, read_text

    doc = parse_toml(read_text(path, UsageError, "pyproject"), UsageError, str(path))
    tool = doc.get("tool", {})
    raw = tool.get("parity") if isinstance(tool, Mapping) else None
    if raw is None:
        return ParityConfig(path=path)
    return parse(raw, path)


def parse(raw: Mapping[str, Any], path: Path | None = None) -> ParityConfig:
    if not isinstance(raw, Mapping):
        raise UsageError(f"{WHERE} must be a table, not {type(raw).__name__} {raw!r:.40}.",
                         note='e.g. [tool.parity] then model = "qwen" on the next line')
    cfg = ParityConfig(path=path)
    for key, val in raw.items():
        if key == "tolerances":
            continue
        cfg.options[key] = check_option(key, val, WHERE)
    tol = raw.get("tolerances", {})
    if not isinstance(tol, Mapping):
        raise UsageError(f"{WHERE}.tolerances must be a table of pattern = {{atol, rtol}}.", note='e.g. [tool.parity.tolerances] "blocks.*.mlp_out" = {atol = 1e-2, rtol = 1e-2}')
    for key, val in tol.items():
        dtype = dtypes.find(key)
        if dtype is not None:
            if not isinstance(val, Mapping):
                raise UsageError(f"[tool.parity.tolerances.{key}] must be a table of pattern = {{atol, rtol}}.",
                                 note='e.g. [tool.parity.tolerances] "blocks.*.mlp_out" = {atol = 1e-2, rtol = 1e-2}')
            cfg.per_dtype.setdefault(dtype.short, {}).update(check_patterns(val, f"[tool.parity.tolerances.{key}]"))
        else:
            cfg.tolerances.update(check_patterns({key: val}, "[tool.parity.tolerances]"))
    return cfg


def check_option(key: str, val: Any, where: str) -> Any:
    """A run option given in pyproject.toml or a marker: known name, plausible type."""
    if key not in OPTION_KEYS:
        raise UsageError(f"{where} has unknown key '{key}'.",
                         note="valid keys: tolerances, " + ", ".join(sorted(OPTION_KEYS)))
    default = getattr(RunOptions(), key)
    want: tuple[type, ...]
    if isinstance(default, bool):
        want = (bool,)
    elif isinstance(default, list) or key == "probes":
        want = (list, str)
    elif key in ("seed", "tokens"):
        want = (int,)
    elif key in ("atol", "rtol", "budget"):
        want = (int, float)
    else:
        want = (str,)
    if val is not None and (not isinstance(val, want) or (isinstance(val, bool) and bool not in want)):
        raise UsageError(f"{where}.{key} = {val!r} has the wrong type.", note=f"expected {' or '.join(t.__name__ for t in want)}")
    if isinstance(val, list) and not all(isinstance(v, str) for v in val):
        raise UsageError(f"{where}.{key} = {val!r}: every element must be a string.", note='e.g. probes = ["blocks.*"]')
    if key in ("probes", "probe_dirs") and isinstance(val, str):
        val = [val]
    return val


def check_patterns(raw: Mapping[str, Any], where: str, names: Iterable[str] | None = None) -> dict[str, Any]:
    """Validate {pattern: {atol, rtol}}: numbers, known keys, and every pattern matches a probe."""
    layer = dict(raw)
    table_from({"default": layer.get("default", {}), **{k: v for k, v in layer.items() if k != "default"}}, where)
    pool = list(names) if names is not None else universe()
    for pat in layer:
        if pat != "default" and not any(fnmatch.fnmatchcase(n, pat) for n in pool):
            scope = "name" if names is None else f"of this model ({len(pool)} probes)"
            raise UsageError(f"{where} pattern '{pat}' matches no probe {scope}.",
                             note="probe names: " + ", ".join(canon.HEAD_PROBES) + ", blocks.{i}.(" + "|".join(canon.BLOCK_POINTS) + "), " + ", ".join(canon.TAIL_PROBES))
    return layer


def universe() -> list[str]:
    names = list(canon.HEAD_PROBES) + list(canon.TAIL_PROBES)
    return names + [f"blocks.{i}.{p}" for i in range(_MAX_BLOCKS) for p in canon.BLOCK_POINTS]


def stack(base: ToleranceTable, layers: Iterable[tuple[str, Mapping[str, Any]]], names: list[str]) -> ToleranceTable:
    """Layer user pattern tables on a preset table (see the module docstring)."""
    default, rules = base.default, dict(base.rules)
    for where, layer in layers:
        if not layer:
            continue
        check_patterns(layer, where, names)
        t = table_from({"default": layer.get("default", {}), **{k: v for k, v in layer.items() if k != "default"}}, where)
        if "default" in layer:
            default = t.default
        rules.update(t.rules)
    return ToleranceTable(default, rules)

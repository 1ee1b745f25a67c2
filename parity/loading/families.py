"""Model families: how to build each one, its probe map, and its preset.

A preset (``models/<family>/preset.toml``) holds the tiny embedded config used
when no checkpoint is given (or, with ``fetched = NAME``, names the folder ``parity fetch
NAME`` makes as the default checkpoint: ``smollm2``, a model of the llama family), the per-dtype tolerance tables, the chat format and stop
tokens. Real checkpoints go through the very same ``build`` with their config.json.
"""
from __future__ import annotations

import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parity.errors import ModelError
from parity.resources import find_file
from parity.compare.tolerances import ToleranceTable, table_from

DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16",
               "float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


@dataclass
class Preset:
    family: str
    description: str
    model_types: tuple[str, ...]
    probe_map: str
    seed: int
    config: dict[str, Any]
    tolerances: dict[str, ToleranceTable]
    chat: dict[str, Any] = field(default_factory=dict)
    shapes: dict[str, dict[str, Any]] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)
    fetched: str | None = None  # default checkpoint: the folder `parity fetch <fetched>` makes
    #: probe map of the checkpoint's own modeling code (--trust-remote-code), when its module
    #: tree differs from parity's implementation of the family
    remote_probe_map: str | None = None
    #: ``[activations.NAME]`` tables: structure planted into seeded weights (parity.loading.activations)
    activations: dict[str, dict[str, Any]] = field(default_factory=dict)
    path: Path | None = None

    def tolerance_table(self, dtype: str) -> ToleranceTable:
        name = DTYPE_NAMES.get(dtype, dtype)
        if name not in self.tolerances:
            raise ModelError(
                f"preset '{self.family}' has no tolerances for {name}.",
                note="valid dtypes: " + ", ".join(self.tolerances),
            )
        return self.tolerances[name]


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[[dict[str, Any], str], Any]  # (config dict, attn impl) -> nn.Module
    make_config: Callable[[dict[str, Any]], Any]
    preset_name: str | None = None  # a model of this family with its own preset (smollm2: llama)

    def preset(self, extra_dirs: Sequence[str | Path] = ()) -> Preset:
        return load_preset(self.preset_name or self.name, extra_dirs)


def _qwen_config(cfg: dict[str, Any]) -> Any:
    from parity.models.qwen import QWenConfig

    try:
        return QWenConfig.from_dict(cfg)
    except (ValueError, TypeError) as exc:
        raise ModelError(f"Qwen v1 config: {exc}", note="config.json as the model's repository has it") from None


def _build_qwen(cfg: dict[str, Any], attn: str) -> Any:
    from parity.models.qwen import QWenLMHeadModel

    return QWenLMHeadModel(_qwen_config(cfg), attn_implementation=attn)


def _hf_config(cls_name: str) -> Callable[[dict[str, Any]], Any]:
    def make(cfg: dict[str, Any]) -> Any:
        import transformers

        cls = getattr(transformers, cls_name)
        clean = {k: v for k, v in cfg.items() if k not in ("architectures", "auto_map", "transformers_version")}
        try:
            return cls(**clean)
        except Exception as exc:  # noqa: BLE001 - user input; transformers' strict dataclasses raise their own types
            raise ModelError(f"{cls_name}: {' '.join(str(exc).split())[:300]}",
                             note="check config.json's sizes (--debug shows where)") from None

    return make


def _hf_build(cfg_name: str, model_name: str) -> Callable[[dict[str, Any], str], Any]:
    make = _hf_config(cfg_name)

    def build(cfg: dict[str, Any], attn: str) -> Any:
        import transformers

        config = make(cfg)
        config._attn_implementation = attn
        return getattr(transformers, model_name)(config)

    return build


FAMILIES: dict[str, Family] = {
    "qwen": Family("qwen", _build_qwen, _qwen_config),
    "qwen2": Family("qwen2", _hf_build("Qwen2Config", "Qwen2ForCausalLM"), _hf_config("Qwen2Config")),
    "llama": Family("llama", _hf_build("LlamaConfig", "LlamaForCausalLM"), _hf_config("LlamaConfig")),
    # A real trained model of the llama family; its default checkpoint is `parity fetch smollm2`.
    "smollm2": Family("llama", _hf_build("LlamaConfig", "LlamaForCausalLM"), _hf_config("LlamaConfig"), "smollm2"),
}


def get(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ModelError(f"unknown model '{name}'.", note="valid models: " + ", ".join(FAMILIES)) from None


def family_for_model_type(model_type: str | None) -> str | None:
    for key, fam in FAMILIES.items():
        if fam.preset_name is None and model_type in fam.preset().model_types:
            return key
    return None


def load_preset(family: str, extra_dirs: Sequence[str | Path] = ()) -> Preset:
    path = find_file("models", f"{family}/preset.toml", extra_dirs)
    if path is None:
        raise ModelError(f"no preset for model '{family}'.", note="`parity doctor` lists the models")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ModelError(f"preset {path}: {exc}", note="a preset.toml like models/llama/preset.toml") from None
    try:
        tols = {dt: table_from(t, f"{path.name}: tolerances.{dt}") for dt, t in raw.get("tolerances", {}).items()}
        return Preset(
            family=raw["family"],
            description=raw.get("description", ""),
            model_types=tuple(raw.get("model_types", [raw["family"]])),
            probe_map=raw.get("probe_map", raw["family"]),
            seed=int(raw.get("seed", 0)),
            config=dict(raw["config"]),
            tolerances=tols,
            chat=dict(raw.get("chat", {})),
            shapes={k: dict(v) for k, v in raw.get("shapes", {}).items()},
            generation=dict(raw.get("generation", {})),
            fetched=raw.get("fetched"),
            remote_probe_map=raw.get("remote_probe_map"),
            activations={k: dict(v) for k, v in raw.get("activations", {}).items()},
            path=path,
        )
    except KeyError as exc:
        raise ModelError(f"preset {path} lacks key {exc}.", note="a preset.toml like models/llama/preset.toml") from None


def num_blocks(config: Any) -> int:
    n = getattr(config, "num_hidden_layers", None)
    if not isinstance(n, int):
        raise ModelError("model config has no num_hidden_layers.", note="config.json as the model's repository has it")
    return n

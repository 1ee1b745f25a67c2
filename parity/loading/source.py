"""Where the model comes from: a family preset (seeded weights), a checkpoint folder, a GGUF
file (converted once to a cached folder, parity.loading.gguf) or a fetched real model (a
preset with ``fetched = NAME``: ``--model smollm2`` reads ``parity fetch smollm2``'s folder).

``ModelSource.resolve`` validates everything up front (family, config, weights on disk)
so that bad input fails before any model is built. ``build(device)`` makes the float32
reference module; every candidate derives from it.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parity.loading import checkpoint as ckpt
from parity.loading import families
from parity.errors import CheckpointError, ModelError
from parity.loading.families import Family, Preset


@dataclass
class ModelSource:
    family: Family
    preset: Preset
    config_dict: dict[str, Any]
    config: Any
    checkpoint: Path | None = None
    seed: int = 0
    trust_remote_code: bool = False
    shape: str | None = None
    gguf: Path | None = None  # the GGUF file ``checkpoint`` was converted from
    #: --trust-remote-code: the shims its modeling code needed (set by build; see parity.loading.remote)
    remote_shims: list[str] | None = None
    #: seeded weights: "plain" (Gaussian) or "trained" (trained-model structure planted: parity.loading.activations)
    activations: str = "plain"

    @classmethod
    def resolve(cls, model: str, checkpoint: str | Path | None = None, seed: int | None = None,
                trust_remote_code: bool = False, shape: str | None = None,
                overrides: dict[str, Any] | None = None, activations: str = "plain",
                family_dirs: Sequence[str | Path] = ()) -> ModelSource:
        fam = families.get(model, family_dirs)
        preset = fam.preset()
        _check_activations(model, preset, activations, checkpoint)
        if shape is not None and shape not in preset.shapes:
            raise ModelError(f"model '{model}' has no shape '{shape}'.",
                             note="valid shapes: " + (", ".join(preset.shapes) or "none"))
        if checkpoint is None and preset.fetched and shape is None:
            from parity.loading import fetch

            checkpoint = fetch.require(preset.fetched)
        gguf = None
        if checkpoint is None:
            cfg = dict(preset.config)
            cfg.update(preset.shapes.get(shape, {}) if shape else {})
            cfg.update(overrides or {})
            folder = None
        else:
            folder, gguf = _folder(model, preset, checkpoint)
            cfg = ckpt.read_config(folder)
            _check_model_type(model, preset, cfg.get("model_type"), gguf or folder)
            ckpt.weight_files(folder)  # fail early when weights are absent
        if shape is not None and folder is not None:
            raise ModelError("--shape builds seeded weights; it cannot be combined with --checkpoint.", note="drop one of them")
        cfg = _checked(fam.name, cfg, str(folder / "config.json") if folder is not None else f"preset '{model}'")
        return cls(fam, preset, cfg, fam.make_config(cfg), folder,
                   preset.seed if seed is None else seed, trust_remote_code, shape, gguf, activations=activations)

    @property
    def probe_map_name(self) -> str:
        """The probe map of the implementation that builds the reference."""
        if self.trust_remote_code and self.checkpoint is not None and self.preset.remote_probe_map:
            return self.preset.remote_probe_map
        return self.preset.probe_map

    @property
    def label(self) -> str:
        if self.gguf:
            return f"{self.gguf} (converted: {self.checkpoint})"
        if self.checkpoint:
            return str(self.checkpoint)
        trained = ":trained-activations" if self.activations == "trained" else ""
        return f"preset:{self.family.name}" + (f":{self.shape}" if self.shape else "") + trained

    @property
    def num_blocks(self) -> int:
        return families.num_blocks(self.config)

    @property
    def vocab_size(self) -> int:
        v = getattr(self.config, "padded_vocab_size", None) or getattr(self.config, "vocab_size", None)
        if not isinstance(v, int):
            raise ModelError("model config has no vocab_size.", note="config.json as the model's repository has it")
        return v

    def build(self, device: str = "cpu", attn: str = "eager") -> Any:
        """The float32 reference module, in eval mode, on ``device``."""
        import torch

        from parity.loading.limits import check_model_memory

        check_model_memory(self.config_dict, self.label, str(device))  # before anything is allocated

        if self.trust_remote_code and self.checkpoint is not None:
            return self._build_remote(device)
        with torch.device(device), _skip_init(self.checkpoint is not None):
            model = self.family.build(self.config_dict, attn)
        if self.checkpoint is not None and hasattr(model, "tie_weights"):
            model.tie_weights()  # no_init_weights skips init_weights, which ties too
        model = model.to(torch.float32).eval()
        if self.checkpoint is None:
            from parity.loading.weights import seeded_init

            seeded_init(model, self.seed)
            if self.activations == "trained":
                from parity.loading import activations

                spec = activations.TrainedSpec.from_preset(self.preset.activations.get("trained"), self.family.name)
                activations.plant(model, self.family.name, self.config, spec, self.seed)
        else:
            ckpt.apply_state_dict(model, ckpt.load_state_dict(self.checkpoint), str(self.checkpoint))
        if attn == "eager":  # the reference's eager attention, its scores made in blocks of query rows
            from parity.loading import rows_attention as rows

            rows.apply(model)
        return model

    def _build_remote(self, device: str) -> Any:
        """The checkpoint's own modeling code, holding exactly the checkpoint's tensors."""
        from parity.loading import remote

        assert self.checkpoint is not None
        model, self.remote_shims = remote.build(self.checkpoint, self.config_dict, device)
        return model


#: --activations: seeded weights as they are (plain), or with trained-model structure planted
ACTIVATION_KINDS = ("plain", "trained")


def _check_activations(model: str, preset: Preset, activations: str, checkpoint: Any) -> None:
    if activations not in ACTIVATION_KINDS:
        raise ModelError(f"unknown --activations '{activations}'.", note="valid: " + ", ".join(ACTIVATION_KINDS))
    if activations == "plain":
        return
    if checkpoint is not None or preset.fetched:
        raise ModelError("--activations trained plants trained-model structure into seeded weights; a checkpoint "
                         "has its own activations.", note="drop --activations, or use a preset (--model qwen/llama/qwen2, "
                         "optionally --shape 7b)")
    if activations not in preset.activations:
        raise ModelError(f"model '{model}' has no [activations.{activations}] table in its preset.",
                         note="presets with one: qwen, llama, qwen2")


def _checked(family: str, cfg: dict[str, Any], label: str) -> dict[str, Any]:
    """The config's sizes and types (parity.loading.schema): bounded before transformers sees it."""
    from parity.loading.schema import check_config

    return check_config(family, cfg, label)


def _folder(model: str, preset: Preset, checkpoint: str | Path) -> tuple[Path, Path | None]:
    """(the checkpoint folder, the GGUF file it was converted from or None)."""
    from parity.loading import gguf as gguf_convert

    p = Path(checkpoint)
    if not gguf_convert.is_gguf(p):
        return ckpt.checkpoint_dir(p), None

    def check(info: gguf_convert.GGUFInfo) -> None:  # before converting: a wrong --model fails fast
        _check_model_type(model, preset, info.model_type, p)

    return gguf_convert.hf_folder(p, check=check), p


def _check_model_type(model: str, preset: Preset, mt: str | None, where: Path) -> None:
    if mt not in preset.model_types:
        other = families.family_for_model_type(mt)
        raise CheckpointError(
            f"checkpoint '{where}' is a '{mt}' model, not '{model}'.",
            note=f"use --model {other}" if other else "valid models: " + ", ".join(families.names()),
        )


@contextlib.contextmanager
def _skip_init(skip: bool) -> Iterator[None]:
    """No random initialization of weights a checkpoint overwrites anyway (every tensor must be
    in it: apply_state_dict checks). Seconds for 135M parameters, minutes for 7B."""
    ctx: Any = contextlib.nullcontext()
    if skip:
        try:
            from transformers.initialization import no_init_weights
        except ImportError:
            try:
                from transformers.modeling_utils import no_init_weights
            except ImportError:
                no_init_weights = None
        if no_init_weights is not None:
            ctx = no_init_weights()
    with ctx:
        yield

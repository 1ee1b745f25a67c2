"""Where the model comes from: a family preset (seeded weights) or a checkpoint folder.

``ModelSource.resolve`` validates everything up front (family, config, weights on disk)
so that bad input fails before any model is built. ``build(device)`` makes the float32
reference module; every candidate derives from it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parity import checkpoint as ckpt
from parity import families
from parity.errors import CheckpointError, ModelError
from parity.families import Family, Preset


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

    @classmethod
    def resolve(cls, model: str, checkpoint: str | Path | None = None, seed: int | None = None,
                trust_remote_code: bool = False, shape: str | None = None,
                overrides: dict[str, Any] | None = None) -> ModelSource:
        fam = families.get(model)
        preset = fam.preset()
        if shape is not None and shape not in preset.shapes:
            raise ModelError(f"model '{model}' has no shape '{shape}'.",
                             note="valid shapes: " + (", ".join(preset.shapes) or "none"))
        if checkpoint is None:
            cfg = dict(preset.config)
            cfg.update(preset.shapes.get(shape, {}) if shape else {})
            cfg.update(overrides or {})
            folder = None
        else:
            folder = ckpt.checkpoint_dir(checkpoint)
            cfg = ckpt.read_config(folder)
            mt = cfg.get("model_type")
            if mt not in preset.model_types:
                other = families.family_for_model_type(mt)
                raise CheckpointError(
                    f"checkpoint '{folder}' is a '{mt}' model, not '{model}'.",
                    note=f"use --model {other}" if other else "valid models: " + ", ".join(families.FAMILIES),
                )
            ckpt.weight_files(folder)  # fail early when weights are absent
        if shape is not None and folder is not None:
            raise ModelError("--shape builds seeded weights; it cannot be combined with --checkpoint.")
        return cls(fam, preset, cfg, fam.make_config(cfg), folder,
                   preset.seed if seed is None else seed, trust_remote_code, shape)

    @property
    def label(self) -> str:
        if self.checkpoint:
            return str(self.checkpoint)
        return f"preset:{self.family.name}" + (f":{self.shape}" if self.shape else "")

    @property
    def num_blocks(self) -> int:
        return families.num_blocks(self.config)

    @property
    def vocab_size(self) -> int:
        v = getattr(self.config, "padded_vocab_size", None) or getattr(self.config, "vocab_size", None)
        if not isinstance(v, int):
            raise ModelError("model config has no vocab_size.")
        return v

    def build(self, device: str = "cpu", attn: str = "eager") -> Any:
        """The float32 reference module, in eval mode, on ``device``."""
        import torch

        if self.trust_remote_code and self.checkpoint is not None:
            return self._build_remote(device)
        with torch.device(device):
            model = self.family.build(self.config_dict, attn)
        model = model.to(torch.float32).eval()
        if self.checkpoint is None:
            from parity.weights import seeded_init

            seeded_init(model, self.seed)
        else:
            ckpt.apply_state_dict(model, ckpt.load_state_dict(self.checkpoint), str(self.checkpoint))
        return model

    def _build_remote(self, device: str) -> Any:
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            str(self.checkpoint), trust_remote_code=True, dtype=torch.float32
        )
        return model.to(device).eval()

"""``--trust-remote-code``: a checkpoint's own modeling code (``auto_map`` in config.json),
loaded so that the model holds exactly what the checkpoint holds.

``AutoModelForCausalLM.from_pretrained`` is not used: under transformers 5 it builds the
model on the meta device and then materializes it, which leaves the remote code's
non-persistent buffers (a registered causal mask, rotary ``inv_freq``) as uninitialized
memory or on the meta device, and it runs the remote ``_init_weights`` over modules whose
weights were loaded (Qwen v1's re-initializes every ``c_proj.weight``). Instead the remote
class is built for real on the target device -- its ``__init__`` computes its buffers -- and
parity's own loader copies every checkpoint tensor in (strict: missing, extra or mis-shaped
tensors are errors), then checks that every one of them is in the model bit for bit and that
nothing is left on the meta device or non-finite.

Remote code written for older transformers may need shims; each is applied only while the
model loads, only when it is needed, and listed in the report (``reference.remote_shims``):

* ``transformers_stream_generator``: a stand-in module when the real package is missing or
  cannot import (its release breaks under transformers 5); only streaming ``generate``
  uses it, never the forward pass parity runs.
* ``get_head_mask``: removed from transformers' ``PreTrainedModel``; the remote class gets a
  version that accepts only ``head_mask=None`` (what parity passes).

A package the remote code really computes with (``einops``) is never faked: its absence is
an error naming it.
"""
from __future__ import annotations

import contextlib
import importlib
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from parity.errors import CheckpointError, UsageError

STUBBED = {"transformers_stream_generator": "only streaming generate() uses it"}


def model_class_ref(config: dict[str, Any], folder: Path) -> str:
    ref = (config.get("auto_map") or {}).get("AutoModelForCausalLM")
    if not isinstance(ref, str):
        raise CheckpointError(f"checkpoint '{folder}' has no auto_map.AutoModelForCausalLM in config.json: there is "
                              "no remote code to trust.", note="drop --trust-remote-code")
    return ref


def build(folder: Path, config: dict[str, Any], device: str) -> tuple[Any, list[str]]:
    """(the remote model in float32 on ``device``, eval mode, the shims applied)."""
    import torch

    from parity.loading import checkpoint as ckpt

    ref = model_class_ref(config, folder)
    shims: list[str] = []
    with _stand_ins(shims):
        cls, cfg = _load_class(folder, ref)
        _patch_class(cls, shims)
        with torch.device(device):
            model = cls(cfg)
    model = model.to(torch.float32).eval()
    sd = ckpt.load_state_dict(folder)
    ckpt.apply_state_dict(model, sd, str(folder))
    verify_loaded(model, sd, str(folder))
    return model, shims


def _load_class(folder: Path, ref: str) -> tuple[Any, Any]:
    from transformers import AutoConfig
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    try:
        cfg = AutoConfig.from_pretrained(str(folder), trust_remote_code=True)
        cls = get_class_from_dynamic_module(ref, str(folder))
    except ImportError as exc:
        text = " ".join(str(exc).split())
        raise UsageError(f"the checkpoint's modeling code cannot be imported: {text}",
                         note="install the packages it names (parity installs nothing)") from None
    return cls, cfg


@contextlib.contextmanager
def _stand_ins(applied: list[str]) -> Iterator[None]:
    """Stand-in modules for the packages in STUBBED that cannot be imported, while loading."""
    added = []
    for name, why in STUBBED.items():
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - missing, or broken under this transformers
            sys.modules[name] = _StandIn(name)
            added.append(name)
            applied.append(f"{name}: a stand-in module ({why}; the package is missing or cannot import)")
    try:
        yield
    finally:
        for name in added:
            sys.modules.pop(name, None)


class _StandIn(types.ModuleType):
    """A module whose every attribute is a function that does nothing."""

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return lambda *a, **k: None


def _get_head_mask(self: Any, head_mask: Any, num_hidden_layers: int, *args: Any, **kwargs: Any) -> list[None]:
    if head_mask is not None:
        raise NotImplementedError("parity's get_head_mask stand-in takes head_mask=None only")
    return [None] * num_hidden_layers


def _patch_class(cls: Any, applied: list[str]) -> None:
    if not hasattr(cls, "get_head_mask"):
        cls.get_head_mask = _get_head_mask
        applied.append("get_head_mask: added to the remote class (removed from transformers' PreTrainedModel; "
                       "head_mask=None only)")


def verify_loaded(model: Any, sd: dict[str, Any], where: str) -> None:
    """Every checkpoint tensor is in the model bit for bit (in float32); no tensor is left on
    the meta device; every buffer is finite. Raises CheckpointError naming what is not."""
    import torch

    own = model.state_dict()
    for name, src in sd.items():
        if name in own and not torch.equal(own[name].detach().cpu(), src.to(own[name].dtype).cpu()):
            raise CheckpointError(f"{where}: after loading, the model's '{name}' differs from the checkpoint's "
                                  "(the remote code changed it): refusing to compare against wrong weights.")
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.device.type == "meta":
            raise CheckpointError(f"{where}: the remote model's '{name}' is still on the meta device after loading.",
                                  note="the modeling code computes it outside __init__; parity cannot verify it")
    for name, b in model.named_buffers():
        if b.is_floating_point() and b.numel() and not torch.isfinite(b).all():
            raise CheckpointError(f"{where}: the remote model's buffer '{name}' holds non-finite values after "
                                  "loading (uninitialized memory?).")


def describe(model: Any) -> str:
    """Which implementation a model is: its class, and whether it is remote code."""
    cls = type(model)
    remote = cls.__module__.startswith("transformers_modules")
    return f"{'remote code ' if remote else ''}{cls.__module__}.{cls.__qualname__}"


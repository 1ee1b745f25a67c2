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
* methods transformers 5 removed from ``PreTrainedModel`` (``ModuleUtilsMixin`` in 4.x):
  ``get_head_mask`` (only ``head_mask=None``, what parity passes), ``invert_attention_mask``
  and ``get_extended_attention_mask`` (2-D/3-D padding masks, the 4.x arithmetic). They are
  added to the remote code's own base class (the one that derives from ``PreTrainedModel``),
  so every remote class has them -- the original Qwen-7B-Chat ``modeling_qwen.py`` calls
  ``self.get_head_mask`` from the inner ``QWenModel.forward``, not from the top class.

After loading, every buffer of the model is compared, bit for bit and whatever its dtype,
with a fresh computation by the same ``__init__`` (a second build whose parameters stay on
the meta device): a causal mask or rotary table that is not what the code computes from
config.json (uninitialized memory, a garbage value saved into the checkpoint) is refused
with the buffer's name.

Only code inside the checkpoint folder is loaded: every ``auto_map`` entry parity uses must
be ``module.Class`` naming a ``module.py`` in the folder (no path, no ``..``, no
``other/repo--module.Class`` reference that would fetch code from another repository).

A package the remote code really computes with (``einops``) is never faked: its absence is
an error naming it.
"""
from __future__ import annotations

import contextlib
import importlib
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from parity.errors import CheckpointError, UsageError

STUBBED = {"transformers_stream_generator": "only streaming generate() uses it"}
_REF = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*")
_NOTE_CODE = "the checkpoint's own code (auto_map in config.json) must import and build under this transformers"


def model_class_ref(config: dict[str, Any], folder: Path) -> str:
    auto_map = config.get("auto_map") or {}
    ref = auto_map.get("AutoModelForCausalLM") if isinstance(auto_map, dict) else None
    if not isinstance(ref, str):
        raise CheckpointError(f"checkpoint '{folder}' has no auto_map.AutoModelForCausalLM in config.json: there is "
                              "no remote code to trust.", note="drop --trust-remote-code")
    for key in ("AutoConfig", "AutoModelForCausalLM"):
        if key in auto_map:
            _check_ref(key, auto_map[key], folder)
    return ref


def _check_ref(key: str, ref: Any, folder: Path) -> None:
    """Only ``module.Class`` with ``module.py`` inside the checkpoint folder may load."""
    if isinstance(ref, (list, tuple)):  # tokenizer-style [slow, fast]; never loaded by parity
        return
    if not isinstance(ref, str) or "--" in ref or not _REF.fullmatch(ref):
        where = "code from another repository" if isinstance(ref, str) and "--" in ref else "a path, not 'module.Class'"
        raise CheckpointError(f"checkpoint '{folder}': auto_map.{key} = {ref!r} names {where}: parity loads remote "
                              "code only from a module inside the checkpoint folder.",
                              note="copy the modeling file into the checkpoint and set auto_map to 'module.Class'")
    module = ref.split(".")[0]
    if not (folder / f"{module}.py").is_file():
        raise CheckpointError(f"checkpoint '{folder}': auto_map.{key} names '{module}.py', which is not in the "
                              "checkpoint folder.", note="copy the modeling files next to config.json")


def build(folder: Path, config: dict[str, Any], device: str) -> tuple[Any, list[str]]:
    """(the remote model in float32 on ``device``, eval mode, the shims applied)."""
    import torch

    from parity.loading import checkpoint as ckpt

    ref = model_class_ref(config, folder)
    shims: list[str] = []
    with _stand_ins(shims):
        cls, cfg = _load_class(folder, ref)
        _patch_class(cls, shims)
        with _remote_errors(f"building {cls.__name__}"), torch.device(device):
            model = cls(cfg)
    model = model.to(torch.float32).eval()
    sd = ckpt.load_state_dict(folder)
    ckpt.apply_state_dict(model, sd, str(folder))
    verify_loaded(model, sd, str(folder))
    with _remote_errors(f"building {cls.__name__} a second time"):
        verify_buffers(model, _fresh_buffers(cls, cfg, device), sd, str(folder))
    return model, shims


def _load_class(folder: Path, ref: str) -> tuple[Any, Any]:
    from transformers import AutoConfig
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its own warning about a missing package: the error below names it
    try:
        cfg = AutoConfig.from_pretrained(str(folder), trust_remote_code=True, local_files_only=True)
        cls = get_class_from_dynamic_module(ref, str(folder), local_files_only=True)
    except ImportError as exc:
        text = " ".join(str(exc).split())
        raise UsageError(f"the checkpoint's modeling code cannot be imported: {text}",
                         note="install the packages it names (parity installs nothing)") from None
    except AttributeError as exc:
        raise UsageError(f"the checkpoint's modeling code has no class for auto_map '{ref}': {_one_line(exc)}",
                         note="auto_map.AutoModelForCausalLM must name a class its module defines") from None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the remote code's own failure, not parity's
        raise UsageError(f"the checkpoint's modeling code ('{ref}') failed on import: {_one_line(exc)}",
                         note=_NOTE_CODE) from None
    finally:
        hf_logging.set_verbosity(level)
    return cls, cfg


@contextlib.contextmanager
def _remote_errors(what: str) -> Iterator[None]:
    """An exception (or sys.exit) raised by the remote code itself is the checkpoint's, not parity's."""
    try:
        yield
    except (Exception, SystemExit) as exc:  # noqa: BLE001
        if isinstance(exc, CheckpointError) or not _raised_in_remote_code(exc):
            raise
        raise UsageError(f"the checkpoint's modeling code failed while {what}: {_one_line(exc)}",
                         note=_NOTE_CODE) from None


def _raised_in_remote_code(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if "transformers_modules" in tb.tb_frame.f_globals.get("__name__", ""):
            return True
        tb = tb.tb_next
    return isinstance(exc, SystemExit)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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


def _extended(self: Any, mask: Any) -> Any:
    """transformers 4.x ``ModuleUtilsMixin``: 1 = attend, 0 = masked -> 0 / dtype min, broadcast over heads."""
    import torch

    if mask.dim() not in (2, 3):
        raise NotImplementedError(f"parity's attention-mask stand-in takes 2-D or 3-D masks, not {mask.dim()}-D")
    ext = mask[:, None, :, :] if mask.dim() == 3 else mask[:, None, None, :]
    ext = ext.to(dtype=self.dtype)
    return (1.0 - ext) * torch.finfo(self.dtype).min


def _invert_attention_mask(self: Any, encoder_attention_mask: Any) -> Any:
    return _extended(self, encoder_attention_mask)


def _get_extended_attention_mask(self: Any, attention_mask: Any, input_shape: Any = None, *args: Any, **kwargs: Any) -> Any:
    if attention_mask.dim() == 2 and getattr(self.config, "is_decoder", False):
        raise NotImplementedError("parity's get_extended_attention_mask stand-in does not build decoder masks")
    return _extended(self, attention_mask)


SHIMS = {
    "get_head_mask": (_get_head_mask, "head_mask=None only"),
    "invert_attention_mask": (_invert_attention_mask, "transformers 4.x arithmetic"),
    "get_extended_attention_mask": (_get_extended_attention_mask, "padding masks, transformers 4.x arithmetic"),
}


def _patch_class(cls: Any, applied: list[str]) -> None:
    """Add the methods transformers 5 removed to the remote code's base class, so that the
    top class and every inner ``PreTrainedModel`` of the same code (``QWenModel``) have them."""
    base = _remote_base(cls)
    for name, (fn, what) in SHIMS.items():
        if not hasattr(base, name):
            setattr(base, name, fn)
        if base.__dict__.get(name) is fn:  # added now, or when this module was loaded before in this process
            applied.append(f"{name}: added to {base.__name__}, the remote code's base class (removed from "
                           f"transformers' PreTrainedModel; {what})")


def _remote_base(cls: Any) -> Any:
    """The last class in ``cls``'s MRO defined by the remote code (its ``XPreTrainedModel``)."""
    ours = [c for c in cls.__mro__ if c.__module__ == cls.__module__]
    return ours[-1] if ours else cls


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """While active, every parameter a module registers is moved to the meta device (buffers stay real)."""
    import torch

    original = torch.nn.Module.register_parameter

    def register(module: Any, name: str, param: Any) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original  # type: ignore[method-assign]


def _fresh_buffers(cls: Any, cfg: Any, device: str) -> dict[str, Any]:
    """Every buffer as the remote ``__init__`` computes it, on ``device``, in the loaded model's dtype."""
    import torch

    with _parameters_on_meta(), torch.device(device):
        fresh = cls(cfg)
    fresh = fresh.to(torch.float32)
    return dict(fresh.named_buffers())


def verify_buffers(model: Any, fresh: dict[str, Any], sd: dict[str, Any], where: str) -> None:
    """Every buffer of the loaded model equals its fresh computation, bit for bit, whatever its dtype."""
    import torch

    for name, b in model.named_buffers():
        ref = fresh.get(name)
        if ref is None or ref.device.type == "meta":
            continue
        same = (b.shape == ref.shape and b.dtype == ref.dtype
                and torch.equal(b.detach().view(-1).cpu(), ref.detach().view(-1).cpu()))
        if not same and b.is_floating_point() and b.shape == ref.shape:
            same = bool(torch.isnan(b).eq(torch.isnan(ref)).all()) and torch.equal(b.nan_to_num(), ref.nan_to_num())
        if not same:
            origin = "the checkpoint holds it" if name in sd else "uninitialized memory or changed after __init__?"
            raise CheckpointError(f"{where}: the remote model's buffer '{name}' ({_kind(b)}) is not what its modeling "
                                  f"code computes from config.json ({origin}): refusing to compare against it.",
                                  note="rebuild the checkpoint without this buffer, or load it with the code that "
                                       "computes it")


def _kind(t: Any) -> str:
    return f"{str(t.dtype).removeprefix('torch.')} {list(t.shape)}"


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

"""Read checkpoint folders: config.json, safetensors or .bin weights (never pickles
implicitly: ``torch.load(weights_only=True)``), validated against the model with errors
that name the tensor at fault.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

from parity.errors import CheckpointError, ParityError

IGNORED_SUFFIXES = ("rotary_emb.inv_freq", ".masked_bias", ".attn.bias")


def checkpoint_dir(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint '{p}' does not exist.", note="--checkpoint takes a folder with config.json and weights")
    if not p.is_dir():
        raise CheckpointError(f"checkpoint '{p}' is not a folder.", note="--checkpoint takes a folder with config.json and weights, or a .gguf file")
    return p


def read_json_object(path: Path, error: type[ParityError], label: str) -> dict[str, Any]:
    """A JSON file holding an object; ``error(...)`` naming ``label`` otherwise."""
    from parity.validate import parse_json, read_text

    data = parse_json(read_text(path, error, label), error, label)
    if not isinstance(data, dict):
        raise error(f"{label} is not a JSON object.", note="the file as the model's repository has it")
    return data


def read_config(folder: Path) -> dict[str, Any]:
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise CheckpointError(f"checkpoint '{folder}' has no config.json.", note="a Hugging Face model folder has config.json beside its weights")
    return read_json_object(cfg, CheckpointError, str(cfg))


def weight_files(folder: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            files = [_shard_path(folder, s, index) for s in _index_shards(index)]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise CheckpointError(f"checkpoint '{folder}' lacks shard {missing[0]} named in {index_name}.",
                              note="download the missing shard (every file the index names)")
            return files
    found = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not found:
        raise CheckpointError(
            f"checkpoint '{folder}' has no weights.",
            note="expected model.safetensors, model-*.safetensors (+ index) or pytorch_model*.bin",
        )
    return found


def _index_shards(index: Path) -> list[str]:
    """The shard file names of a sharded checkpoint's index (weight_map: tensor -> file)."""
    data = read_json_object(index, CheckpointError, str(index))
    wm = data.get("weight_map")
    if not isinstance(wm, dict) or not wm or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in wm.items()):
        raise CheckpointError(f"{index}: 'weight_map' must be a non-empty object of tensor name -> shard file name.",
                              note="the index as the model's repository has it")
    return sorted(set(wm.values()))


def _shard_path(folder: Path, name: str, index: Path) -> Path:
    """``folder / name`` when it stays inside the checkpoint folder (symlinks resolved);
    a shard named ``../../etc/passwd``, an absolute path or a link leading out is refused."""
    p = Path(name)
    inside = folder.resolve()
    if p.is_absolute() or ".." in p.parts or "\x00" in name:
        raise CheckpointError(f"{index} names shard '{name}', a path outside the checkpoint folder.",
                              note="shard names are file names inside the checkpoint folder")
    target = (folder / p).resolve()
    if not target.is_relative_to(inside):
        raise CheckpointError(f"{index} names shard '{name}', which leads outside the checkpoint folder (to {target}).",
                              note="shard names are file names inside the checkpoint folder")
    return folder / p


#: tensor dtypes a checkpoint's weights may have (cast to the model's float dtype); integer and
#: bool "weights" are a broken or quantized export, not something to cast silently
WEIGHT_DTYPES = ("float32", "float16", "bfloat16", "float64")


def _check_dtypes(sd: dict[str, Any], path: Path) -> None:
    for key, t in sd.items():
        if key.endswith(IGNORED_SUFFIXES):  # buffers (masks) the model rebuilds itself
            continue
        name = str(t.dtype).removeprefix("torch.")
        if name not in WEIGHT_DTYPES:
            raise CheckpointError(f"{path.name}: tensor '{key}' has dtype {name}.",
                                  note="weights must be " + ", ".join(WEIGHT_DTYPES) + " (a quantized checkpoint needs dequantizing first)")


def _load_file(path: Path) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            text = " ".join(str(exc).split())[:200]
            raise CheckpointError(f"cannot read weights {path.name}: {text} (truncated or not safetensors?)",
                                  note="download or save the file again") from None
    import pickle

    import torch

    import warnings

    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr: the error says it all
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError,
            KeyError, IndexError, UnicodeDecodeError, MemoryError) as exc:
        raise CheckpointError(f"cannot read weights {path.name}: {_load_error(exc)}",
                              note="parity loads .bin/.pt weights only as plain tensors; convert them to safetensors") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path.name} does not hold a state dict.", note="a state dict maps parameter names to tensors")
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path.name}: '{key}' is not a tensor ({type(value).__name__}).",
                                  note="a state dict maps parameter names to tensors")
    return obj


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _load_error(exc: BaseException) -> str:
    """One clean line for a refused torch.load: the class a pickle wanted, when it names one."""
    text = _ANSI.sub("", str(exc))
    m = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"Unsupported global: ([\w.]+)", text)
    if m:
        return (f"it holds a pickled '{m.group(1)}' object, not only tensors (parity never unpickles arbitrary "
                "objects; save the state dict's tensors, e.g. with safetensors)")
    if "Weights only load failed" in text or isinstance(exc, pickle.UnpicklingError):
        m = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        why = f" ({m.group(1).strip()[:120]})" if m else ""
        return f"it is a pickle torch's safe loader refuses{why}: not only tensors, so parity does not load it"
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def load_state_dict(folder: Path) -> dict[str, Any]:
    sd: dict[str, Any] = {}
    for f in weight_files(folder):
        part = _load_file(f)
        _check_dtypes(part, f)
        sd.update(part)
    return sd


def apply_state_dict(model: Any, sd: dict[str, Any], where: str) -> None:
    """Copy ``sd`` into ``model``; every model tensor must be present with its shape."""
    import torch

    own = model.state_dict()
    tied = _tied_aliases(model)
    for name, t in own.items():
        if name in sd:
            if tuple(sd[name].shape) != tuple(t.shape):
                raise CheckpointError(
                    f"{where}: tensor '{name}' has shape {list(sd[name].shape)}, the model expects {list(t.shape)}.",
                    note="the weights and config.json come from different models?")
        elif name not in tied or tied[name] not in sd:
            raise CheckpointError(f"{where}: tensor '{name}' is missing from the weights.",
                              note="parity compares only checkpoints it can read completely: download the weights again")
    unexpected = [k for k in sd if k not in own and not k.endswith(IGNORED_SUFFIXES)]
    if unexpected:
        raise CheckpointError(
            f"{where}: weights hold tensor '{unexpected[0]}' that the model does not have"
            + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "") + ".",
            note="is this checkpoint of another model family?",
        )
    with torch.no_grad():
        for name, t in own.items():
            src = sd.get(name)
            if src is not None:
                t.copy_(src)  # cast where the model lives: no float32 copy of a bfloat16 tensor on the host first


def _tied_aliases(model: Any) -> dict[str, str]:
    """Parameter names that share storage with an earlier parameter -> that name."""
    first: dict[int, str] = {}
    alias: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        key = id(p)
        if key in first:
            alias[name] = first[key]
        else:
            first[key] = name
    return alias

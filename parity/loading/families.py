"""Model families: how to build each one, its probe map, and its preset.

A family is its folder: ``<name>/preset.toml`` in a model folder (parity's own ``models/``,
``--family-dir DIR``, ``$PARITY_MODEL_PATH``) is found, not listed; beside it may sit its probe
map (``<probe_map>.toml``) and an engine-style port (``port.py``). The preset's ``[model]`` table
says how to build it. A preset holds the tiny embedded config used
when no checkpoint is given (or, with ``fetched = NAME``, names the folder ``parity fetch
NAME`` makes as the default checkpoint: ``smollm2``, a model of the llama family), the per-dtype tolerance tables, the chat format and stop
tokens. Real checkpoints go through the very same ``build`` with their config.json.
"""
from __future__ import annotations

import contextlib
import sys
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parity import dtypes
from parity.errors import ModelError
from parity.resources import find_file, search_dirs, shipped_dir
from parity.compare.tolerances import ToleranceTable, table_from

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
        name = dtypes.long_name(dtype)
        if name not in self.tolerances:
            raise ModelError(
                f"preset '{self.family}' has no tolerances for {name}.",
                note="valid dtypes: " + ", ".join(self.tolerances),
            )
        return self.tolerances[name]


@dataclass(frozen=True)
class Family:
    name: str  # the architecture (the preset's ``family``): what builds the model
    build: Callable[[dict[str, Any], str], Any]  # (config dict, attn impl) -> nn.Module
    make_config: Callable[[dict[str, Any]], Any]
    preset_name: str | None = None  # a model of this family with its own preset folder (smollm2: llama)
    folder: Path | None = None  # the folder holding its preset.toml (and maybe a probe map, a port)

    def preset(self, extra_dirs: Sequence[str | Path] = ()) -> Preset:
        if self.folder is not None and not extra_dirs:
            return preset_from(self.folder / "preset.toml")
        return load_preset(self.preset_name or self.name, extra_dirs)


#: packages transformers imports when they are installed, for what a forward pass never runs:
#: scikit-learn for assisted generation's acceptance threshold (it brings scipy and pandas),
#: scipy for object-detection losses, torchvision and torchaudio for image and audio
#: processors. Seconds of a fresh process's start on the GPU machine (4.6 s of 17 for a
#: llama run's imports there).
UNUSED_BY_A_FORWARD = ("sklearn", "scipy", "torchvision", "torchaudio")


#: whether to hide them: only in a process parity owns (the ``parity`` command sets it, see
#: parity.cli.entry); in a user's process (the pytest plugin, the Python API) transformers
#: must see what is installed, for whatever else that process does with it
HIDE_UNUSED = False


@contextlib.contextmanager
def unused_packages_hidden() -> Iterator[None]:
    """While transformers' modeling code is first imported, the packages above (those not
    imported yet) look absent to it; afterwards they import as usual. It checks each with
    importlib.util.find_spec, which reads a None in sys.modules as "not installed"."""
    hidden = [name for name in UNUSED_BY_A_FORWARD if name not in sys.modules] if HIDE_UNUSED else []
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def _transformers_class(name: str) -> Any:
    """``transformers.<name>`` (None if it has none), imported with the unused packages hidden;
    where transformers had already found one of them installed before (a long-lived process),
    it imports it after all, as it would have."""
    try:
        with unused_packages_hidden():  # import transformers too: it checks some packages as it loads
            import transformers

            return getattr(transformers, name, None)
    except (ImportError, RuntimeError):
        import transformers

        return getattr(transformers, name, None)


def _hf_config(cls_name: str) -> Callable[[dict[str, Any]], Any]:
    def make(cfg: dict[str, Any]) -> Any:
        cls = _transformers_class(cls_name)
        if cls is None:
            import transformers

            raise ModelError(f"transformers has no config class '{cls_name}' (installed: {transformers.__version__}).",
                             note="the preset's [model] config_class names a class of transformers")
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
        config = make(cfg)
        config._attn_implementation = attn
        cls = _transformers_class(model_name)
        if cls is None:
            import transformers

            raise ModelError(f"transformers has no model class '{model_name}' (installed: {transformers.__version__}).",
                             note="the preset's [model] model_class names a class of transformers")
        return cls(config)

    return build


def _symbol(ref: str, folder: Path) -> Callable[..., Any]:
    """``module:function``, or ``file.py:function`` relative to the family's folder, imported
    when first called (a family's model code may need torch)."""
    def call(*args: Any) -> Any:
        where, _, name = ref.rpartition(":")
        if where.endswith(".py"):
            from importlib.util import module_from_spec, spec_from_file_location

            spec = spec_from_file_location(f"parity_family_{folder.name}_{Path(where).stem}", folder / where)
            if spec is None or spec.loader is None:
                raise ModelError(f"{folder / 'preset.toml'}: cannot load {where}.", note="a path relative to the preset's folder")
            module = module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            import importlib

            module = importlib.import_module(where)
        return getattr(module, name)(*args)

    return call


def _family(folder: Path, raw: dict[str, Any], known: dict[str, Path]) -> Family:
    """The family a preset folder declares: its ``[model]`` table (transformers classes by
    name, or ``config``/``build`` functions), else that of the family it names (smollm2: llama)."""
    spec, arch = raw.get("model", {}), raw.get("family", folder.name)
    preset_name = None if arch == folder.name else folder.name
    if not spec:  # built like its architecture's folder: another one found, else parity's own
        parent = known.get(arch) if arch != folder.name else None
        if parent is None or parent == folder:
            parent = shipped_dir("models") / arch
        if parent != folder and (parent / "preset.toml").is_file():
            base = _family(parent, _read(parent / "preset.toml"), known)
            return Family(arch, base.build, base.make_config, preset_name, folder)
    where = folder / "preset.toml"
    if "model_class" in spec and "config_class" in spec:
        return Family(arch, _hf_build(spec["config_class"], spec["model_class"]), _hf_config(spec["config_class"]),
                      preset_name, folder)
    if "build" in spec and "config" in spec:
        return Family(arch, _symbol(spec["build"], folder), _symbol(spec["config"], folder), preset_name, folder)
    raise ModelError(f"preset {where} does not say how to build the model.",
                     note="give [model] config_class and model_class (transformers), or config and build "
                          "(module:function or file.py:function)")


def discover(extra_dirs: Sequence[str | Path] = ()) -> dict[str, Path]:
    """Family name -> its folder: every ``<name>/preset.toml`` in the model folders (--family-dir
    and $PARITY_MODEL_PATH first, then parity's own), in the order of the presets' ``order``."""
    found: dict[str, Path] = {}
    for d in search_dirs("models", extra_dirs):
        for preset in sorted(Path(d).glob("*/preset.toml")):
            found.setdefault(preset.parent.name, preset.parent)
    rank = {name: _order(folder / "preset.toml") for name, folder in found.items()}
    return {name: found[name] for name in sorted(found, key=lambda n: (rank[n], n))}


def _order(path: Path) -> int:
    try:
        return int(_read(path).get("order", 100))
    except (ModelError, TypeError, ValueError):
        return 100


def names(extra_dirs: Sequence[str | Path] = ()) -> list[str]:
    return list(discover(extra_dirs))


def get(name: str | None, extra_dirs: Sequence[str | Path] = ()) -> Family:
    known = discover(extra_dirs)
    if name not in known:
        raise ModelError(f"unknown model '{name}'.", note="valid models: " + ", ".join(known))
    return _family(known[name], _read(known[name] / "preset.toml"), known)


def family_for_model_type(model_type: str | None, extra_dirs: Sequence[str | Path] = ()) -> str | None:
    for key in discover(extra_dirs):
        fam = get(key, extra_dirs)
        if fam.preset_name is None and model_type in fam.preset().model_types:
            return key
    return None


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ModelError(f"preset {path}: {exc}", note="a preset.toml like models/llama/preset.toml") from None


def load_preset(family: str, extra_dirs: Sequence[str | Path] = ()) -> Preset:
    path = find_file("models", f"{family}/preset.toml", extra_dirs)
    if path is None:
        raise ModelError(f"no preset for model '{family}'.", note="`parity doctor` lists the models")
    return preset_from(path)


def preset_from(path: Path) -> Preset:
    raw = _read(path)
    try:
        tols = {dt: table_from(t, f"{path.name}: tolerances.{dt}") for dt, t in raw.get("tolerances", {}).items()}
        probe_map = raw.get("probe_map", raw["family"])
        if (path.parent / f"{probe_map}.toml").is_file():  # the family's own map, in its folder
            probe_map = str(path.parent / f"{probe_map}.toml")
        return Preset(
            family=raw["family"],
            description=raw.get("description", ""),
            model_types=tuple(raw.get("model_types", [raw["family"]])),
            probe_map=probe_map,
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

"""``parity probes`` (a model's probe map with shapes and locations) and ``parity doctor``
(which packages, candidates and faults are available here)."""
from __future__ import annotations

import argparse
import errno
import functools
import os
import sys
from pathlib import Path
from typing import Any

from parity import __version__
from parity.cli.common import EXIT_OK, add_groups


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("probes", parents=[common], help="list the probes a model provides, with shapes and locations")
    add_groups(p, ("model",))
    p.add_argument("--probes", "-p", action="append", metavar="GLOB", help="filter by glob")
    p.set_defaults(func=cmd_probes)

    p = sub.add_parser("doctor", parents=[common], help="which packages and candidates are available here")
    p.add_argument("--engine", choices=["tensorrt", "trtllm"],
                   help="also check the installed package's API surface that parity relies on")
    p.set_defaults(func=cmd_doctor)


def probe_shape(point: str, cfg: Any) -> str:
    """Canonical shape (no batch) of a probe point, from the model config."""
    h = getattr(cfg, "hidden_size", None)
    heads = getattr(cfg, "num_attention_heads", None)
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    hd = getattr(cfg, "head_dim", None) or (h // heads if h and heads else None)
    rot = getattr(cfg, "rotary_dim", None) or int((hd or 0) * getattr(cfg, "partial_rotary_factor", 1.0))
    vocab = getattr(cfg, "vocab_size", None)  # lm_head rows (Qwen v1 pads only the embedding)
    shapes = {
        "rope.cos": f"[T, {rot}]", "rope.sin": f"[T, {rot}]",
        "attn.q": f"[T, {heads}, {hd}]", "attn.q_rot": f"[T, {heads}, {hd}]",
        "attn.k": f"[T, {kv}, {hd}]", "attn.k_rot": f"[T, {kv}, {hd}]", "attn.v": f"[T, {kv}, {hd}]",
        "logits": f"[T, {vocab}]",
    }
    return shapes.get(point, f"[T, {h}]")


def cmd_probes(ns: argparse.Namespace) -> int:
    from parity.capture import probes as canon
    from parity.capture.probemap import find_map
    from parity.loading.source import ModelSource

    from parity.cli.common import infer_model
    from parity.errors import UsageError

    for d in ns.probe_dirs:
        if not Path(d).is_dir():
            raise UsageError(f"--probe-dir {d}: no such folder.", note="a folder of probe map .toml files")
    source = ModelSource.resolve(ns.model or infer_model(ns.checkpoint, ns.family_dirs), ns.checkpoint,
                                 trust_remote_code=ns.trust_remote_code, shape=ns.shape, family_dirs=ns.family_dirs)
    pmap = find_map(source.probe_map_name, ns.probe_dirs)
    names = canon.select(pmap.names(source.num_blocks), ns.probes)
    from parity.cli.common import say

    say(f"# {source.family.name}: probe map {pmap.path} ({len(names)} probes)")
    for name in names:
        b = pmap.bind(name, source.config)
        spec = b.spec
        where = f"{spec.io}" + (f"[{spec.index}]" if spec.index is not None else "") + (f"[{spec.kwarg}]" if spec.kwarg else "")
        extra = f" transform={spec.transform}" if spec.transform else ""
        say(f"{probe_shape(canon.parse(name).point, source.config):22s} {b.module} {where}{extra}", lead=f"{name:28s} ")
    return EXIT_OK


#: what parity itself uses (the engines' packages come from their declarations)
CORE_PACKAGES = ("torch", "transformers", "safetensors", "numpy", "pandas", "rich", "tiktoken", "jinja2", "accelerate")


def doctor_packages() -> list[str]:
    """parity's own packages, then each engine's requirements (its declaration's one list)."""
    from parity import engines

    found = list(CORE_PACKAGES)
    for eng in engines.all_engines():
        found += [p for p in eng.requires if p not in found]
    return found


def package_version(module: str) -> str | None:
    """Version of the import ``module``: its ``__version__`` when it is already imported,
    else that of the distribution of the same name or the one that provides it (read from
    the metadata: nothing is imported); None when ``module`` is not installed."""
    import importlib.metadata as md
    import importlib.util

    loaded = getattr(sys.modules.get(module), "__version__", None)
    if loaded is not None:
        return str(loaded)
    try:
        if importlib.util.find_spec(module) is None:
            return None
    except (ImportError, ValueError):
        return None
    for dist in [module, *_distributions().get(module, [])]:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            continue
    return "installed (version unknown)"


@functools.cache
def _distributions() -> dict[str, list[str]]:
    import importlib.metadata as md

    try:
        return dict(md.packages_distributions())
    except Exception:  # noqa: BLE001 - a broken metadata entry must not break doctor
        return {}


def cuda_line() -> str:
    """CUDA as torch sees it: the CUDA version torch was built for, whether a GPU is usable
    and which."""
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        return f"unknown (torch does not import: {type(exc).__name__}: {exc})"
    built = f"torch built for CUDA {torch.version.cuda}" if torch.version.cuda else "torch built without CUDA"
    if getattr(torch.version, "hip", None):
        built += f" (ROCm {torch.version.hip})"
    try:
        if not torch.cuda.is_available():
            return f"{built}; not available"
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception as exc:  # noqa: BLE001 - a driver problem is what doctor should show
        return f"{built}; not usable ({type(exc).__name__}: {exc})"
    gpus = ", ".join(f"{names.count(n)} x {n}" if names.count(n) > 1 else n for n in dict.fromkeys(names))
    return f"{built}; available, {len(names)} GPU{'s' if len(names) != 1 else ''}: {gpus}"


def _drop_stdout() -> None:
    """The reader of stdout went away (``parity doctor | head -3``): point the file
    descriptor at /dev/null so that the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real file descriptor (captured output)
        pass


def cmd_doctor(ns: argparse.Namespace) -> int:
    try:
        _doctor()
        if getattr(ns, "engine", None):
            from parity.engines.api_surface import check

            from parity.cli.common import say

            say(f"API surface ({ns.engine}):")
            for line in check(ns.engine):
                text = line.lstrip()
                say(text, lead=" " * max(2, len(line) - len(text)))
        sys.stdout.flush()
    except OSError as exc:  # BrokenPipeError, or EPIPE as a plain OSError on some platforms
        if not isinstance(exc, BrokenPipeError) and exc.errno != errno.EPIPE:
            raise
        _drop_stdout()
    return EXIT_OK


def _doctor() -> None:
    from parity.cli.common import say

    say(f"parity {__version__}, Python {sys.version.split()[0]}")
    sys.stdout.flush()
    say(sys.executable, lead=f"  {'python':14s} ")
    say(cuda_line(), lead=f"  {'CUDA':14s} ")
    say("packages:")
    for pkg in doctor_packages():
        say(package_version(pkg) or "missing", lead=f"  {pkg:14s} ")

    from parity import engines

    say("candidates:")
    for eng in engines.all_engines():
        state = "available" if eng.is_available() else "unavailable (needs " + ", ".join(eng.missing()) + ")"
        say(f"{state} - {eng.summary}", lead=f"  {eng.name:14s} ")
    from parity.errors import ParityError
    from parity.loading import families

    say("models (--model; a folder with a preset.toml each, --family-dir adds yours):")
    for name, folder in families.discover().items():
        try:
            about = families.preset_from(folder / "preset.toml").description
        except ParityError as exc:  # a broken user preset is reported, not fatal here
            about = f"unreadable: {exc}"
        say(f"{about} ({folder})", lead=f"  {name:14s} ")
    if engines.info("port").is_available():
        from parity import faults

        say("faults (--candidate port --fault NAME[@BLOCK]):")
        for name, summary in faults.describe().items():
            say(summary, lead=f"  {name:18s} ")
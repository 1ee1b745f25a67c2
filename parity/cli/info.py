"""``parity probes`` (a model's probe map with shapes and locations) and ``parity doctor``
(which packages, candidates and faults are available here)."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from parity import __version__
from parity.cli.common import EXIT_OK
from parity.options import add_group


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("probes", parents=[common], help="list the probes a model provides, with shapes and locations")
    add_group(p, "model")
    p.add_argument("--probes", "-p", action="append", metavar="GLOB", help="filter by glob")
    p.set_defaults(func=cmd_probes)

    p = sub.add_parser("doctor", parents=[common], help="which packages and candidates are available here")
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

    source = ModelSource.resolve(ns.model, ns.checkpoint, trust_remote_code=ns.trust_remote_code, shape=ns.shape)
    pmap = find_map(source.probe_map_name, ns.probe_dirs)
    names = canon.select(pmap.names(source.num_blocks), ns.probes)
    print(f"# {source.family.name}: probe map {pmap.path} ({len(names)} probes)")
    for name in names:
        b = pmap.bind(name, source.config)
        spec = b.spec
        where = f"{spec.io}" + (f"[{spec.index}]" if spec.index is not None else "") + (f"[{spec.kwarg}]" if spec.kwarg else "")
        extra = f" transform={spec.transform}" if spec.transform else ""
        print(f"{name:28s} {probe_shape(canon.parse(name).point, source.config):22s} {b.module} {where}{extra}")
    return EXIT_OK


def cmd_doctor(ns: argparse.Namespace) -> int:
    import importlib.util

    from parity.backends import CANDIDATES

    print(f"parity {__version__}, Python {sys.version.split()[0]}")
    for pkg in ("torch", "transformers", "safetensors", "numpy", "pandas", "rich", "tiktoken", "onnx", "onnxruntime", "tensorrt", "tensorrt_llm", "jinja2", "gguf", "accelerate"):
        print(f"  {pkg:14s} {'installed' if importlib.util.find_spec(pkg) else 'missing'}")
    print("candidates:")
    for bi in CANDIDATES.values():
        state = "available" if bi.is_available() else "unavailable (needs " + ", ".join(bi.missing()) + ")"
        print(f"  {bi.name:14s} {state} - {bi.summary}")
    if CANDIDATES["port"].is_available():
        from parity import faults

        print("faults (--candidate port --fault NAME[@BLOCK]):")
        for name, summary in faults.describe().items():
            print(f"  {name:18s} {summary}")
    return EXIT_OK

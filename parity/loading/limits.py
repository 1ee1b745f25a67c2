"""Sizes checked against the memory there is, before anything is allocated: a model's weights
(the float32 reference, from the config's sizes) and a run's activations (tokens x vocab
logits, tokens x hidden per kept probe, eager attention's tokens^2 scores). ``--tokens
1000000000`` or a 5M-id file is an input error naming the size, not a MemoryError.
"""
from __future__ import annotations

import os
import sys
from typing import Any

from parity.errors import InputError, ModelError

#: the most token ids one run takes (eager attention's scores alone grow with its square)
MAX_TOKENS = 1 << 20
_GIB = 1 << 30


def available_bytes(device: str | None = None) -> int:
    """Free memory of ``device`` ("cpu", "cuda", "cuda:N"); None: free host memory plus the
    largest free GPU memory when torch is loaded and sees a GPU."""
    torch = sys.modules.get("torch")
    gpu = 0
    if torch is not None and (device is None or device.startswith("cuda")):
        try:
            if torch.cuda.is_available():
                idx = [int(device.split(":")[1])] if device and ":" in device else range(torch.cuda.device_count())
                gpu = max(torch.cuda.mem_get_info(i)[0] for i in idx)
        except Exception:  # noqa: BLE001 - a broken CUDA setup is reported where it is used
            gpu = 0
    if device is not None and device.startswith("cuda"):
        return gpu or (1 << 40)  # no reading: do not refuse
    return _meminfo_available() + gpu


def _meminfo_available() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 40  # unknown: do not refuse


def _sizes(cfg: dict[str, Any]) -> tuple[int, int, int, int, int]:
    """(vocab, hidden, layers, intermediate, heads) of a config dict of any family."""
    def get(*keys: str) -> int:
        for k in keys:
            v = cfg.get(k)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
        return 1
    vocab = max(get("vocab_size"), get("padded_vocab_size"))
    inter = get("intermediate_size") if "intermediate_size" in cfg else max(1, get("ffn_hidden_size") // 2)
    return (vocab, get("hidden_size", "n_embd"), get("num_hidden_layers", "n_layer"), inter,
            get("num_attention_heads", "n_head"))


def weight_bytes(cfg: dict[str, Any]) -> int:
    vocab, h, layers, inter, _ = _sizes(cfg)
    return 4 * (2 * vocab * h + layers * (4 * h * h + 3 * h * inter))


def check_model_memory(cfg: dict[str, Any], label: str, device: str | None = None) -> None:
    """The float32 reference of ``cfg`` must fit in the free memory of ``device``."""
    need, have = weight_bytes(cfg), available_bytes(device)
    if need > have:
        raise ModelError(f"{label}: a model of this size needs about {need / _GIB:.1f} GiB for its float32 "
                         f"weights, and {have / _GIB:.1f} GiB is free.",
                         note="check vocab_size, hidden_size, num_hidden_layers and intermediate_size")


def activation_bytes(tokens: int, cfg: dict[str, Any]) -> int:
    vocab, h, layers, _, heads = _sizes(cfg)
    return 4 * (3 * tokens * vocab + 16 * layers * tokens * h + 2 * heads * tokens * tokens)


def check_tokens(tokens: int, cfg: dict[str, Any], what: str) -> None:
    """A run of ``tokens`` ids must fit: at most MAX_TOKENS, activations within free memory."""
    if tokens > MAX_TOKENS:
        raise InputError(f"{what}: {tokens} tokens; parity compares at most {MAX_TOKENS} tokens in one run.",
                         note="use fewer tokens")
    need, have = activation_bytes(tokens, cfg), available_bytes()
    if need > have:
        raise InputError(f"{what}: {tokens} tokens need about {need / _GIB:.1f} GiB of activations "
                         f"(logits, kept probes, attention scores) and {have / _GIB:.1f} GiB is free.",
                         note="use fewer tokens")

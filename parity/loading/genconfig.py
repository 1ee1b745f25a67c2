"""Generation settings: the reference's, the candidate's, their stop sets and differences.

The reference's settings are the checkpoint's ``generation_config.json``, else the preset's
``[generation]`` table (Qwen-7B-Chat's real values for ``qwen``). Its stop set is the
``eos_token_id`` list plus the chat format's stop tokens (``[chat].stop_tokens``): Qwen's
``chat()`` stops at ``<|im_end|>`` although the file names only ``<|endoftext|>``.

The candidate's settings are ``--candidate-generation-config FILE.json`` when given — and
then its stop set is exactly that file's ``eos_token_id``, because an engine that is handed a
generation config stops where it says and nowhere else — otherwise a copy of the reference's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parity.loading.chat import Vocab
from parity.loading.checkpoint import read_json_object
from parity.errors import InputError

# Keys compared between the two sides, in report order.
SAMPLING_KEYS = ("eos_token_id", "pad_token_id", "bos_token_id", "do_sample", "temperature", "top_p",
                 "top_k", "repetition_penalty", "max_new_tokens", "max_length", "max_window_size")


@dataclass
class GenSettings:
    """One side's generation settings and the stop set it decodes with."""

    source: str
    config: dict[str, Any]
    stop_ids: list[int] = field(default_factory=list)
    from_engine: bool = False  # the stop set is the engine's own (read from its model file)

    def to_dict(self, vocab: Vocab) -> dict[str, Any]:
        return {"source": self.source, "config": self.config, "stop_ids": self.stop_ids,
                "stop_tokens": [vocab.label(t) for t in self.stop_ids]}


def eos_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]


def read_json_config(path: str | Path, what: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} '{p}' does not exist.", note="give a generation_config.json file")
    from parity.loading.schema import check_generation_config

    label = f"{what} '{p}'"
    return check_generation_config(read_json_object(p, InputError, label), label)


def reference_settings(preset: Any, checkpoint: Path | None, chat_stop_ids: list[int]) -> GenSettings:
    gen_file = checkpoint / "generation_config.json" if checkpoint else None
    if gen_file is not None and gen_file.is_file():
        cfg, src = read_json_config(gen_file, "generation config"), str(gen_file)
    else:
        cfg, src = dict(preset.generation), f"preset:{preset.family} [generation]"
    stops = _unique(eos_list(cfg.get("eos_token_id")) + chat_stop_ids)
    return GenSettings(src, cfg, stops)


def candidate_settings(reference: GenSettings, path: str | None) -> GenSettings:
    if path is None:
        return GenSettings("same as reference", dict(reference.config), list(reference.stop_ids))
    cfg = read_json_config(path, "--candidate-generation-config")
    return GenSettings(str(path), cfg, _unique(eos_list(cfg.get("eos_token_id"))))


def sampling_diff(ref: dict[str, Any], cand: dict[str, Any]) -> list[dict[str, Any]]:
    """Keys whose values differ; a key one side lacks shows as null (that engine's default)."""
    out = []
    for key in SAMPLING_KEYS:
        r, c = ref.get(key), cand.get(key)
        if key == "eos_token_id":
            r, c = eos_list(r) or None, eos_list(c) or None
            if r is not None and c is not None and sorted(r) == sorted(c):
                continue
        if r != c and not _same_number(r, c):
            out.append({"key": key, "reference": r, "candidate": c})
    return out


def stop_set_diff(ref: GenSettings, cand: GenSettings, vocab: Vocab) -> dict[str, Any] | None:
    missing = [t for t in ref.stop_ids if t not in cand.stop_ids]
    extra = [t for t in cand.stop_ids if t not in ref.stop_ids]
    if not missing and not extra:
        return None
    return {"reference": [vocab.label(t) for t in ref.stop_ids],
            "candidate": [vocab.label(t) for t in cand.stop_ids],
            "missing_in_candidate": [vocab.label(t) for t in missing],
            "extra_in_candidate": [vocab.label(t) for t in extra]}


def _same_number(a: Any, b: Any) -> bool:
    nums = (int, float)
    return (isinstance(a, nums) and isinstance(b, nums) and not isinstance(a, bool)
            and not isinstance(b, bool) and float(a) == float(b))


def _unique(ids: list[int]) -> list[int]:
    return list(dict.fromkeys(ids))

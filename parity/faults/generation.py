"""Generation faults: what they may change on the candidate's decode (its stop set, its
generation config, the decode-step position offset), and the built-in ones (``eos-token``,
``kv-position``), registered with target "generation": such a fault receives the
:class:`CandidateGeneration` as its "module". Only ``parity generate`` can show them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from parity.errors import UsageError
from parity.faults.registry import fault as _fault


@dataclass
class CandidateGeneration:
    """What a generation-side fault may change on the candidate: its stop set, its
    generation config, the decode-step position offset. ``notes`` say what was done."""

    stop_ids: list[int]
    config: dict[str, Any]
    specials: dict[str, int]
    model_eos: list[int]
    position_offset: int = 0
    notes: list[str] = field(default_factory=list)


def fault_eos_token(gen: CandidateGeneration) -> None:
    """The engine's single end token is ``<|endoftext|>`` (or, for a family without it, the
    model config's ``eos_token_id``), so it no longer stops at ``<|im_end|>`` or the other
    chat stop tokens -- the end-token bug of real Qwen-7B-Chat ports (docs/guide/generation.md)."""
    eos = gen.specials.get("<|endoftext|>")
    new = [eos] if eos is not None else list(gen.model_eos)
    if not new or sorted(new) == sorted(gen.stop_ids):
        raise UsageError("fault 'eos-token' changes nothing for this model: its stop set is already "
                         f"{gen.stop_ids}.", note="use it with a chat model that has several stop tokens (qwen, qwen2)")
    gen.stop_ids = new
    gen.config["eos_token_id"] = new[0] if len(new) == 1 else new
    gen.notes.append(f"eos-token: candidate stops only at {new}")


def fault_kv_position(gen: CandidateGeneration) -> None:
    """Decode steps use position ``past_length + 1`` instead of ``past_length`` (off by one
    for every token fed through the KV cache); the prefill, a single forward pass, is right."""
    gen.position_offset = 1
    gen.notes.append("kv-position: decode-step positions off by +1")


_fault("eos-token", "candidate stops only at <|endoftext|> (the engine's single end token)",
       target="generation", per_block=False)(lambda gen, spec, ctx: fault_eos_token(gen))
_fault("kv-position", "decode steps use position past_length + 1 (KV-cache position bug)",
       target="generation", per_block=False)(lambda gen, spec, ctx: fault_kv_position(gen))

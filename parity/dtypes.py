"""The candidate dtypes: one vocabulary for every layer (no torch import).

A ``DType`` is parsed once where a dtype enters (a flag, a marker, a GGUF file's type) and
carried from there. It *is* its short spelling (``DType`` subclasses ``str``: ``"fp16"``, what
``--dtype`` takes and ``run.dtype`` in a report holds) and knows the rest: the long name
tensors and tolerance tables use (``.long``: ``"float16"``; report fields that describe
tensors, ``candidate.dtype`` and ``verdict.dtype``, spell it this way), the torch dtype, its
unit roundoff and its largest finite value.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from parity.errors import UsageError

if TYPE_CHECKING:
    import torch


class DType(str):
    """A candidate dtype; equal to (and hashed as) its short spelling."""

    long: str
    unit_roundoff: float
    max: float
    gguf: str  # llama.cpp's converter outtype

    def __new__(cls, short: str, long: str, unit_roundoff: float, max_finite: float, gguf: str) -> DType:
        self = super().__new__(cls, short)
        self.long, self.unit_roundoff, self.max, self.gguf = long, unit_roundoff, max_finite, gguf
        return self

    @property
    def short(self) -> str:
        return str.__str__(self)

    def torch(self) -> torch.dtype:
        import torch

        return getattr(torch, self.long)

    def __reduce__(self) -> tuple[Any, ...]:
        return (parse, (self.short,))


FP32 = DType("fp32", "float32", 2.0**-24, 3.4028234663852886e38, "f32")
FP16 = DType("fp16", "float16", 2.0**-11, 65504.0, "f16")
BF16 = DType("bf16", "bfloat16", 2.0**-8, 3.3895313892515355e38, "bf16")
DTYPES: tuple[DType, ...] = (FP32, FP16, BF16)
_BY_NAME = {**{d.short: d for d in DTYPES}, **{d.long: d for d in DTYPES}}
#: every spelling accepted: the short names, then the long ones
SPELLINGS: tuple[str, ...] = tuple(d.short for d in DTYPES) + tuple(d.long for d in DTYPES)
#: unit roundoff by long name (how tensors' dtypes are spelled)
UNIT_ROUNDOFF: dict[str, float] = {d.long: d.unit_roundoff for d in DTYPES}
FP16_MAX = FP16.max


def find(text: object) -> DType | None:
    """The dtype spelled ``text`` (short or long, or ``torch.float16``), else None."""
    if isinstance(text, DType):
        return text
    name = str(text).removeprefix("torch.")
    return _BY_NAME.get(name)


def parse(text: object) -> DType:
    """The dtype spelled ``text``; a UsageError naming the valid spellings otherwise."""
    found = find(text)
    if found is None:
        raise UsageError(f"unknown dtype '{text}'.", note="valid dtypes: " + ", ".join(SPELLINGS))
    return found


def carry(text: Any) -> Any:
    """``text`` as a DType when it spells one, else unchanged (checked later, with the other
    options, where an unknown dtype is a one-line error)."""
    return find(text) if isinstance(text, str) and find(text) is not None else text


def long_name(text: Any) -> Any:
    """The long spelling of a dtype (``fp16`` -> ``float16``); anything else unchanged."""
    found = find(text) if text is not None else None
    return found.long if found is not None else text


def half_precision(text: object) -> torch.dtype | None:
    """The torch dtype of ``text`` when it is a half-precision dtype (fp16, bf16), else None."""
    found = find(text) if text is not None else None
    return found.torch() if found is not None and found is not FP32 else None

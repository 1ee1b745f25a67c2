"""The statistics of one tensor and of one comparison, as plain data (no torch): what the
capture and compare code computes on the device and the verdict and report read."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class TensorStats:
    shape: list[int]
    dtype: str
    mean: float
    sum: float
    abs_max: float
    nan: int
    inf: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DiffStats:
    numel: int
    max_abs_err: float
    mean_abs_err: float
    max_rel_err: float
    cosine: float
    snr_db: float
    nrmse: float
    n_bad: int
    n_nonfinite_mismatch: int
    worst_index: list[int]
    worst_ref: float
    worst_cand: float

    @property
    def passed(self) -> bool:
        return self.n_bad == 0 and self.n_nonfinite_mismatch == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TokenProfile:
    """Per-token shape of the error of one probe (dim 0 = tokens), computed on device.

    ``first_token_err`` / ``later_tokens_err``: max |ref - cand| at token 0 / at tokens >= 1
    (inf where one side is non-finite); ``scale_fit_nrmse``: the nrmse left after fitting one
    scalar per token (``cand_t ~ a_t * ref_t``): near 0 when the error is a per-token rescale,
    as a norm with the wrong epsilon produces; ``token_scale_min/max``: range of those a_t.
    """

    first_token_err: float
    later_tokens_err: float | None
    scale_fit_nrmse: float
    token_scale_min: float
    token_scale_max: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

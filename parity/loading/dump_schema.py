"""Schemas of dump files: the name map (``--dump-map`` TOML) and a parity dump's
manifest.json. Unknown keys, wrong types (``offset = 'abc'``, ``ignore = 5``,
``pattern = 5``), probes that are not canonical names and patterns whose block group cannot
match a number are errors naming the file and the key, before any tensor is read."""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from parity.capture import probes as canon
from parity.errors import ParityError, ProbeError
from parity.validate import check

Text = Annotated[str, Field(strict=True, min_length=1, max_length=1024)]


class TensorRule(BaseModel):
    """One ``[[tensor]]`` entry: a dumped name (regex, named group ``i`` for the block) -> probe."""

    model_config = ConfigDict(extra="forbid")

    pattern: Text
    probe: Text
    offset: Annotated[int, Field(strict=True, ge=-4096, le=4096)] = 0
    tp: Literal["replicated", "sum", "concat"] | None = None

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a regular expression ({exc})") from None
        return v

    @field_validator("probe")
    @classmethod
    def _canonical(cls, v: str) -> str:
        try:
            canon.parse(v.replace("{i}", "0"))
        except ParityError:
            raise ValueError("not a canonical probe name (embed, rope.cos, rope.sin, blocks.{i}.<point>, "
                             "final_norm, logits)") from None
        return v

    @model_validator(mode="after")
    def _block_group(self) -> TensorRule:
        has_group = "i" in re.compile(self.pattern).groupindex
        if ("{i}" in self.probe) != has_group:
            raise ValueError("a probe with {i} needs a pattern with a named group (?P<i>\\d+), and only then")
        return self


class NameMapFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tensor: Annotated[list[TensorRule], Field(max_length=4096)] = []
    ignore: Annotated[list[Text], Field(max_length=4096)] = []


def check_name_map(raw: Any, where: str) -> NameMapFile:
    return check(NameMapFile, raw, ProbeError, where)


class ProbeInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    shape: Annotated[list[Annotated[int, Field(strict=True, ge=0)]], Field(max_length=8)] | None = None
    dtype: Annotated[str, Field(strict=True)] | None = None


class Manifest(BaseModel):
    """manifest.json of a parity dump (``parity dump``): what readers rely on."""

    model_config = ConfigDict(extra="allow")

    format: Literal["parity-dump"]
    version: Annotated[int, Field(strict=True, ge=1)] | None = None
    model: Annotated[str, Field(strict=True)] | None = None
    dtype: Annotated[str, Field(strict=True)] | None = None
    input_ids: list[Annotated[int, Field(strict=True, ge=0)]] | None = None
    probes: dict[str, ProbeInfo] = {}

    @field_validator("probes")
    @classmethod
    def _canonical(cls, v: dict[str, ProbeInfo]) -> dict[str, ProbeInfo]:
        for name in v:
            if not canon.is_canonical(name):
                raise ValueError(f"'{name}' is not a canonical probe name")
        return v


def check_manifest(raw: Any, where: str) -> Manifest:
    return check(Manifest, raw, ProbeError, where)

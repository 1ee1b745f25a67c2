"""The schema of probe maps (parity/probes/*.toml, ``--port-map``, ``--trtllm-map``): every
entry's keys and types checked before a map is used, so that ``index = "zero"`` or
``reset = "residual"`` (a string where a list belongs) is an error naming the file and the
key, not a hook that silently reads the wrong element."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from parity.errors import ProbeError
from parity.validate import check

Name = Annotated[str, Field(strict=True, min_length=1, max_length=512)]
Index = Annotated[int, Field(strict=True, ge=-64, le=64)]


class Entry(BaseModel):
    """One probe: where it lives and how its tensor is taken."""

    model_config = ConfigDict(extra="forbid")

    module: Annotated[str, Field(strict=True, max_length=512)]
    io: Literal["input", "output"] = "output"
    index: Index | None = None
    kwarg: Name | None = None
    heads: Name | None = None
    batched: Annotated[bool, Field(strict=True)] = True
    transform: Name | None = None


class Block(BaseModel):
    """``[block]``: how a block is fed for the isolated (teacher-forced) pass."""

    model_config = ConfigDict(extra="forbid")

    module: Annotated[str, Field(strict=True, min_length=1, max_length=512)]
    input: Name = "hidden_states"
    reset: Annotated[list[Name], Field(max_length=64)] = []


class ProbeMapFile(BaseModel):
    model_config = ConfigDict(extra="allow")  # description, notes, ... are free

    architecture: Annotated[str, Field(strict=True)] | None = None
    probes: Annotated[dict[str, Entry], Field(min_length=1)]
    block: Block | None = None


def check_probe_map(raw: Any, where: str) -> ProbeMapFile:
    return check(ProbeMapFile, raw, ProbeError, where)

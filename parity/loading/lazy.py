"""Weights read one tensor at a time, never the whole model at once: what a streamed reference
(parity.loading.streamed) and a tensor-parallel shard load.

* :class:`SeededWeights` -- a preset's seeded weights (parity.loading.weights), the very
  values ``seeded_init`` gives, drawn parameter by parameter. The generator's state is kept
  before every parameter drawn, so a parameter asked for again (the precision twin's pass, a
  candidate's copy) costs one draw, not a replay from the first parameter.
* :class:`CheckpointWeights` -- a checkpoint's tensors, memory-mapped: safetensors' lazy
  ``safe_open`` (``get_slice`` reads only a shard's rows), ``.bin`` files through
  ``torch.load(mmap=True, weights_only=True)``. Names, shapes and dtypes are checked against
  the model from the files' headers before anything is read.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from parity.errors import CheckpointError
from parity.loading import checkpoint as ckpt
from parity.loading.weights import seeded_value


class SeededWeights:
    """Parameter ``name`` of a preset model, seeded as ``seeded_init`` seeds it.

    ``order``: (name, shape) of every parameter in ``named_parameters()`` order (tied
    aliases removed), the order ``seeded_init`` draws them in."""

    def __init__(self, order: Sequence[tuple[str, tuple[int, ...]]], seed: int, device: str | torch.device) -> None:
        self.order = list(order)
        self.index = {name: k for k, (name, _) in enumerate(self.order)}
        self.device = torch.device(device)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        self.states: dict[int, torch.Tensor] = {0: self.gen.get_state()}
        self.cursor = 0  # the generator stands before parameter `cursor`
        self.label = f"seeded (seed {seed})"

    def names(self) -> list[str]:
        return [n for n, _ in self.order]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.order[self.index[name]][1]

    def get(self, name: str) -> torch.Tensor:
        """The float32 value of ``name`` on the generator's device."""
        k = self.index[name]
        if k != self.cursor:
            j = max(i for i in self.states if i <= k)
            if j > self.cursor or k < self.cursor:  # rewind (or skip ahead) to the nearest kept state
                self.gen.set_state(self.states[j])
                self.cursor = j
        while True:
            n, shape = self.order[self.cursor]
            value = seeded_value(n, shape, self.gen, self.device)
            self.cursor += 1
            self.states.setdefault(self.cursor, self.gen.get_state())
            if self.cursor - 1 == k:
                return value
            del value

    def get_rows(self, name: str, dim: int, start: int, stop: int) -> torch.Tensor:
        return self.get(name).narrow(dim, start, stop - start)


class CheckpointWeights:
    """The tensors of a checkpoint folder, read one at a time from memory-mapped files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.where: dict[str, Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._open: dict[Path, Any] = {}
        for f in ckpt.weight_files(folder):
            self._scan(f)
        self.label = f"checkpoint {folder}"

    def _scan(self, path: Path) -> None:
        handle = self._handle(path)
        if path.suffix == ".safetensors":
            for key in handle.keys():
                sl = handle.get_slice(key)
                self._check_dtype(key, str(sl.get_dtype()), path)
                self.where[key], self.shapes[key] = path, tuple(sl.get_shape())
            return
        for key, t in handle.items():
            self._check_dtype(key, str(t.dtype).removeprefix("torch."), path)
            self.where[key], self.shapes[key] = path, tuple(t.shape)

    @staticmethod
    def _check_dtype(key: str, dtype: str, path: Path) -> None:
        names = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
        name = names.get(dtype, dtype)
        if not key.endswith(ckpt.IGNORED_SUFFIXES) and name not in ckpt.WEIGHT_DTYPES:
            raise CheckpointError(f"{path.name}: tensor '{key}' has dtype {name}.",
                                  note="weights must be " + ", ".join(ckpt.WEIGHT_DTYPES)
                                  + " (a quantized checkpoint needs dequantizing first)")

    def _handle(self, path: Path) -> Any:
        h = self._open.get(path)
        if h is not None:
            return h
        try:
            if path.suffix == ".safetensors":
                from safetensors import safe_open

                h = safe_open(str(path), framework="pt", device="cpu")
            else:
                h = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
                if not isinstance(h, dict):
                    raise CheckpointError(f"{path.name} does not hold a state dict.")
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged file: one line naming it
            raise CheckpointError(f"cannot read weights {path.name}: {' '.join(str(exc).split())[:200]}") from None
        self._open[path] = h
        return h

    def names(self) -> list[str]:
        return list(self.where)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[name]

    def get(self, name: str) -> torch.Tensor:
        """The tensor ``name`` in float32 on the CPU (read from the mapped file)."""
        h = self._handle(self.where[name])
        t = h.get_tensor(name) if self.where[name].suffix == ".safetensors" else h[name]
        return t.to(torch.float32)

    def get_rows(self, name: str, dim: int, start: int, stop: int) -> torch.Tensor:
        """``get(name).narrow(dim, start, stop - start)``, reading only that part where the
        file format allows it (safetensors slices)."""
        path = self.where[name]
        if path.suffix != ".safetensors":
            return self.get(name).narrow(dim, start, stop - start)
        sl = self._handle(path).get_slice(name)
        index = tuple([slice(None)] * dim + [slice(start, stop)])
        return sl[index].to(torch.float32)

    def check(self, expected: dict[str, tuple[int, ...]], aliases: dict[str, str]) -> None:
        """Every tensor of the model present with its shape, nothing foreign (as
        parity.loading.checkpoint.apply_state_dict checks a loaded state dict)."""
        where = str(self.folder)
        for name, shape in expected.items():
            if name in self.shapes:
                if self.shapes[name] != tuple(shape):
                    raise CheckpointError(f"{where}: tensor '{name}' has shape {list(self.shapes[name])}, "
                                          f"the model expects {list(shape)}.")
            elif aliases.get(name) not in self.shapes:
                raise CheckpointError(f"{where}: tensor '{name}' is missing from the weights.")
        unexpected = [k for k in self.shapes if k not in expected and k not in aliases
                      and not k.endswith(ckpt.IGNORED_SUFFIXES)]
        if unexpected:
            raise CheckpointError(f"{where}: weights hold tensor '{unexpected[0]}' that the model does not have"
                                  + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "") + ".",
                                  note="is this checkpoint of another model family?")
